/* cli.h — the subcommands of the `strata` binary.
 *
 * Each takes the arguments after its own name (argv[0] is the subcommand)
 * and returns the process exit status: 0 done, 2 bad usage or bad input,
 * 3 out of memory, 75 stopped on a signal after a good checkpoint, 1
 * anything else. Each
 * prints its own errors as one line on stderr, "strata <cmd>: <message>".
 */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include "strata/err.h"

struct strata_tokenizer;

int strata_cli_pack(int argc, char **argv);
int strata_cli_tokenize(int argc, char **argv);
int strata_cli_inspect(int argc, char **argv);
int strata_cli_train(int argc, char **argv);
int strata_cli_eval(int argc, char **argv);
int strata_cli_import(int argc, char **argv);
int strata_cli_export(int argc, char **argv);
int strata_cli_report(int argc, char **argv);
int strata_cli_bench(int argc, char **argv);
int strata_cli_fisher(int argc, char **argv);
int strata_cli_sample(int argc, char **argv);
int strata_cli_extend_vocab(int argc, char **argv);

/* Loads the tokenizer a --tokenizer option names: "byte", "gpt2" (with
 * vocab and merges) or the path of a Hugging Face tokenizer.json. */
strata_err strata_cli_load_tokenizer(struct strata_tokenizer **tok, const char *name,
                                     const char *vocab, const char *merges);

/* Prints "strata <cmd>: <msg>" on stderr and returns e.code (0 if none). */
int strata_cli_fail(const char *cmd, strata_err e);
/* The log sink of the binary (log.h): info on stdout, the rest on stderr. */
void strata_cli_install_log(void);

#endif
