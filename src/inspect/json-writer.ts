// A clone of bpftool's streaming JSON writer (tools/bpf/bpftool/json_writer.c). `ambpf map|prog`
// must print byte-identical output, so this keeps bpftool's quirks on purpose:
//  - scalars never start a new line, so an array of numbers stays on one line in pretty mode and only
//    its closing bracket moves to the next line;
//  - strings escape \t \n \r \f \b and double quotes like C, and a backslash as "\n" (a bug in
//    bpftool's writer that v7.1 still has); single quotes, other control bytes and bytes >= 0x80 go
//    out unchanged;
//  - the writer's "destroy" appends the final newline.
// Text here is a byte string: one JS char per output byte (latin1), so kernel names that are not
// UTF-8 come out exactly as bpftool writes them.

/** Where text goes: stdout of the command (collected, then written in one go). */
export interface TextSink {
  write(text: string): void;
}

export class JsonWriter {
  private depth = 0;
  private pretty: boolean;
  /** '' or ',': the separator owed before the next item (bpftool's `sep`). */
  private sep = '';
  private readonly out: TextSink;

  constructor(out: TextSink, pretty = false) {
    this.out = out;
    this.pretty = pretty;
  }

  setPretty(on: boolean): void {
    this.pretty = on;
  }

  /** bpftool's jsonw_reset: forget the separator, as if nothing had been written. */
  reset(): void {
    this.sep = '';
  }

  /** End of output: bpftool's jsonw_destroy prints one newline. */
  destroy(): void {
    this.out.write('\n');
  }

  private indent(): void {
    this.out.write('    '.repeat(this.depth));
  }

  private eol(): void {
    if (!this.pretty) return;
    this.out.write('\n');
    this.indent();
  }

  private eor(): void {
    if (this.sep !== '') this.out.write(this.sep);
    this.sep = ',';
  }

  private begin(c: string): void {
    this.eor();
    this.out.write(c);
    this.depth++;
    this.sep = '';
  }

  private end(c: string): void {
    this.depth--;
    if (this.sep !== '') this.eol();
    this.out.write(c);
    this.sep = ',';
  }

  name(name: string): void {
    this.eor();
    this.eol();
    this.sep = '';
    this.out.write(quote(name));
    this.out.write(this.pretty ? ': ' : ':');
  }

  /** A raw value, printed as given (bpftool's jsonw_printf). */
  raw(text: string): void {
    this.eor();
    this.out.write(text);
  }

  /** A raw text wrapped in double quotes without escaping (bpftool's jsonw_vprintf_enquote). */
  enquote(text: string): void {
    this.eor();
    this.out.write(`"${text}"`);
  }

  startObject(): void {
    this.begin('{');
  }
  endObject(): void {
    this.end('}');
  }
  startArray(): void {
    this.begin('[');
  }
  endArray(): void {
    this.end(']');
  }

  string(value: string): void {
    this.eor();
    this.out.write(quote(value));
  }
  bool(value: boolean): void {
    this.raw(value ? 'true' : 'false');
  }
  null(): void {
    this.raw('null');
  }
  /** Any integer (number or bigint), printed in decimal like %u/%d/%llu. */
  int(value: number | bigint): void {
    this.raw(String(value));
  }

  stringField(prop: string, value: string): void {
    this.name(prop);
    this.string(value);
  }
  boolField(prop: string, value: boolean): void {
    this.name(prop);
    this.bool(value);
  }
  intField(prop: string, value: number | bigint): void {
    this.name(prop);
    this.int(value);
  }
  nullField(prop: string): void {
    this.name(prop);
    this.null();
  }
}

const ESCAPES: Readonly<Record<string, string>> = {
  '\t': '\\t',
  '\n': '\\n',
  '\r': '\\r',
  '\f': '\\f',
  '\b': '\\b',
  '\\': '\\n',
  '"': '\\"',
};

/** bpftool's jsonw_puts: C escapes only, no Unicode handling. Stops at a NUL like a C string. */
export function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    if (ch === '\0') break;
    out += ESCAPES[ch] ?? ch;
  }
  return out + '"';
}
