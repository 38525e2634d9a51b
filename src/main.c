/* strata — continued pretraining of GPT-2-style models; see README.md. */
#include <stdio.h>
#include <string.h>

#include "strata/cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} subcommands[] = {
    {"pack", strata_cli_pack, "tokenize text files into HDF5 token shards"},
    {"tokenize", strata_cli_tokenize, "encode a file with a tokenizer and print the ids"},
    {"inspect", strata_cli_inspect, "show a shard, a stream or a checkpoint"},
    {"train", strata_cli_train, "train or continue training from a config"},
    {"eval", strata_cli_eval, "evaluate a checkpoint on the config's eval sets"},
    {"import", strata_cli_import, "convert llm.c or safetensors GPT-2 weights to a checkpoint"},
    {"export", strata_cli_export, "convert a checkpoint to llm.c or safetensors"},
    {"extend-vocab", strata_cli_extend_vocab, "add a tokenizer's new tokens to a checkpoint"},
    {"fisher", strata_cli_fisher, "estimate the diagonal Fisher on replay data (EWC)"},
    {"sample", strata_cli_sample, "generate text from a checkpoint (KV cache, streamed)"},
    {"report", strata_cli_report, "plots and a summary table from metrics files"},
    {"bench", strata_cli_bench, "tokens/s and MFU against the measured sgemm peak"},
};

static void print_usage(FILE *f)
{
    fprintf(f, "usage: strata <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(f, "  %-8s %s\n", subcommands[i].name, subcommands[i].usage);
}

int main(int argc, char **argv)
{
    strata_cli_install_log();
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        print_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (!strcmp(argv[1], subcommands[i].name)) return subcommands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "strata: unknown command '%s' (try strata --help)\n", argv[1]);
    return 2;
}
