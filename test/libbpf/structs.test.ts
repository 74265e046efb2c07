// koffi layouts against the C compiler: sizes and key offsets of linux/bpf.h info structs and
// libbpf's opts structs, from a tiny C program built with gcc against the installed headers.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { koffi } from '../../src/libbpf/ffi.ts';
import * as S from '../../src/libbpf/structs.ts';

const FIELDS: Record<string, readonly string[]> = {
  bpf_object_open_opts: ['object_name', 'pin_root_path', 'kernel_log_buf', 'kernel_log_size', 'kernel_log_level'],
  bpf_map_create_opts: ['btf_fd', 'map_flags', 'map_extra', 'map_ifindex'],
  bpf_prog_load_opts: ['expected_attach_type', 'fd_array', 'log_level', 'log_size', 'log_buf'],
  bpf_test_run_opts: ['data_in', 'data_size_out', 'ctx_in', 'retval', 'repeat', 'duration', 'batch_size'],
  bpf_tc_hook: ['ifindex', 'attach_point', 'parent'],
  bpf_tc_opts: ['prog_fd', 'flags', 'prog_id', 'handle', 'priority'],
  bpf_map_info: ['name', 'ifindex', 'netns_dev', 'btf_id', 'btf_value_type_id', 'map_extra'],
  bpf_prog_info: [
    'tag',
    'load_time',
    'map_ids',
    'name',
    'ifindex',
    'netns_dev',
    'btf_id',
    'run_time_ns',
    'run_cnt',
    'recursion_misses',
    'verified_insns',
    'attach_btf_id',
    'nr_map_ids',
    'func_info_rec_size',
    'func_info',
    'nr_func_info',
  ],
  bpf_link_info: ['prog_id'],
  bpf_link_update_opts: ['flags', 'old_prog_fd'],
  bpf_func_info: ['insn_off', 'type_id'],
  bpf_btf_info: ['btf_size', 'id', 'name', 'name_len', 'kernel_btf'],
};

t.test('koffi struct sizes and offsets equal C sizeof/offsetof', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-sizeof-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <linux/bpf.h>',
    '#include <bpf/libbpf.h>',
    '#include <bpf/bpf.h>',
    'int main(void) {',
  ];
  for (const [st, fields] of Object.entries(FIELDS)) {
    lines.push(`printf("${st} %zu\\n", sizeof(struct ${st}));`);
    for (const f of fields) lines.push(`printf("${st}.${f} %zu\\n", offsetof(struct ${st}, ${f}));`);
  }
  lines.push('return 0; }');
  writeFileSync(join(dir, 'sizes.c'), lines.join('\n'));
  execFileSync('gcc', ['-o', join(dir, 'sizes'), join(dir, 'sizes.c')], { stdio: 'pipe' });
  const c = new Map(
    execFileSync(join(dir, 'sizes'), { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );
  for (const [st, fields] of Object.entries(FIELDS)) {
    const type = (S as unknown as Record<string, S.KoffiType>)[st]!;
    t.equal(koffi.sizeof(type), Number(c.get(st)), `sizeof(struct ${st})`);
    for (const f of fields) t.equal(koffi.offsetof(type, f), Number(c.get(`${st}.${f}`)), `offsetof(${st}, ${f})`);
  }
});
