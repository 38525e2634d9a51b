/* machine.h — what a speed figure was measured on: the CPU model, the
 * kernels OpenBLAS chose for it and the bf16 instructions it has. Every
 * benchmark prints this line; strata never overrides OpenBLAS's choice
 * (OPENBLAS_CORETYPE is the user's, and is reported as found).
 */
#ifndef STRATA_MACHINE_H
#define STRATA_MACHINE_H

#include <stddef.h>

/* One line, e.g. "AMD EPYC 9R14; OpenBLAS 0.3.21 core Zen (OPENBLAS_CORETYPE
 * unset); avx512_bf16; bf16 matmul oneDNN ..." (the last part is
 * strata_gemm_describe's: the backend and ISA bf16 products run on). */
void strata_machine_describe(char *buf, size_t n);

#endif
