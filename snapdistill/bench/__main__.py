from snapdistill.bench.toy import main

main()
