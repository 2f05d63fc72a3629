/* Client commands. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

static const char usage[] =
    "usage: kiln <command> [args]\n"
    "\n"
    "  agent [flags]                 run a node (kiln agent --help)\n"
    "  version                       print the version\n";

int cli_main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0) {
        printf("kiln %s\n", KILN_VERSION);
        return 0;
    }
    fprintf(stderr, "kiln: unknown command '%s'\n%s", argv[1], usage);
    return 2;
}
