// The state bpftool keeps in globals (json_output, pretty_output, show_pinned, json_wtr) as one
// object passed around, plus bpftool's two ways of complaining: p_err (stderr, or an {"error": ..}
// object in JSON mode) and p_info (stderr, silent in JSON mode).
// stdout and stderr are collected as byte strings (latin1) and written by the command at the end,
// so a test can also run the commands in-process.
import { JsonWriter, type TextSink } from './json-writer.ts';

export class Collector implements TextSink {
  private parts: string[] = [];
  write(text: string): void {
    this.parts.push(text);
  }
  text(): string {
    return this.parts.join('');
  }
  bytes(): Buffer {
    return Buffer.from(this.text(), 'latin1');
  }
}

export interface GlobalOptions {
  readonly json: boolean;
  readonly pretty: boolean;
  /** -f/--bpffs: show the pin paths of each object. */
  readonly showPinned: boolean;
}

export class InspectContext {
  readonly stdout = new Collector();
  readonly stderr = new Collector();
  readonly opts: GlobalOptions;
  /** The -j/-p writer (bpftool's json_wtr); null in plain mode. */
  readonly jw: JsonWriter | null;
  /** Name the usage text prints for the tool (bpftool's bin_name). */
  readonly binName: string;

  constructor(opts: GlobalOptions, binName = 'ambpf') {
    this.opts = opts;
    this.binName = binName;
    this.jw = opts.json ? new JsonWriter(this.stdout, opts.pretty) : null;
  }

  get json(): boolean {
    return this.jw !== null;
  }

  /** The JSON writer; only call where bpftool is in JSON mode. */
  get w(): JsonWriter {
    if (!this.jw) throw new Error('JSON writer used in plain mode');
    return this.jw;
  }

  out(text: string): void {
    this.stdout.write(text);
  }

  /** bpftool's p_err. */
  err(message: string): void {
    if (this.jw) {
      this.jw.startObject();
      this.jw.name('error');
      this.jw.enquote(message);
      this.jw.endObject();
    } else {
      this.stderr.write(`Error: ${message}\n`);
    }
  }

  /** bpftool's p_info. */
  info(message: string): void {
    if (!this.jw) this.stderr.write(`${message}\n`);
  }

  /** End of the run: JSON mode closes its writer (a final newline), as bpftool's main does. */
  finish(): void {
    this.jw?.destroy();
  }
}

/** Thrown to unwind like bpftool's usage(): help text already printed, exit -1 (255). */
export class UsageExit extends Error {
  override readonly name = 'UsageExit';
}

/** bpftool's is_prefix(pfx, str): `pfx` is a prefix of `str` (so `sh` selects `show`). */
export function isPrefix(pfx: string | undefined, str: string): boolean {
  if (pfx === undefined) return false;
  return str.length >= pfx.length && str.startsWith(pfx);
}
