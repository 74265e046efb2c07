// The shape every `ambpf <command>` module exports as `command`. main.ts loads a command's module
// only when it is invoked, so a slow import (koffi, the Kubernetes client) costs only its users.
export interface Command {
  /** One line for `ambpf --help`. */
  readonly summary: string;
  /** Full text for `ambpf <name> --help`. */
  readonly usage: string;
  /** Runs the command with the arguments after its name; resolves to the process exit code. */
  run(argv: readonly string[]): Promise<number>;
}
