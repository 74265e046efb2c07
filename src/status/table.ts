// Plain-text tables for the inspection views: left-aligned columns two spaces apart, the last
// column unpadded so lines carry no trailing blanks.
export function renderTable(head: readonly string[], rows: ReadonlyArray<readonly string[]>, indent = ''): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    indent +
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}
