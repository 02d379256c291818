from snapdistill.cli import main

main()
