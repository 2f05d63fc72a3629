/* Client commands: talk HTTP to a node (--addr, $KILN_ADDR). */
#ifndef KILN_CLI_H_
#define KILN_CLI_H_

/* argv[0] is the program name, argv[1] the verb. Returns the exit status. */
int cli_main(int argc, char **argv);

#endif /* KILN_CLI_H_ */
