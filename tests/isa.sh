#!/usr/bin/env bash
# Run a command with the CPU's float kernels capped at one instruction set, as another CPU would run them:
#   tests/isa.sh default|avx2|avx512 COMMAND...
# Caps ATen's dispatch (ATEN_CPU_CAPABILITY), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and MKL's GEMMs
# (MKL_ENABLE_INSTRUCTIONS) together; each is a ceiling, so a CPU without the set runs its best one below it,
# and on ARM the three are ignored.
set -euo pipefail
case "${1:-}" in
  default) export ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  avx512) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE MKL_ENABLE_INSTRUCTIONS=AVX512 ;;
  *) echo "usage: tests/isa.sh default|avx2|avx512 COMMAND..." >&2; exit 2 ;;
esac
shift
exec "$@"
