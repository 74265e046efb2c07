// One SVG per workload, rendered headless by vega-lite + vega: paths side by side (bars = median),
// min-max error bars, one panel per phase and placement.
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { METRICS, PRIMARY_METRIC, type SummaryRow, type WorkloadName } from './types.ts';

export function chartSpec(workload: WorkloadName, rows: readonly SummaryRow[]): TopLevelSpec | undefined {
  const metric = PRIMARY_METRIC[workload];
  const data = rows
    .filter((r) => r.workload === workload && r.metric === metric && Number.isFinite(r.median))
    .map((r) => ({ panel: `${r.phase} / ${r.placement}`, path: r.path, median: r.median, min: r.min, max: r.max }));
  if (data.length === 0) return undefined;
  const info = METRICS[metric];
  const title = `${workload}: ${info?.label ?? metric} (${info?.unit ?? ''}, ${info?.higherIsBetter ? 'higher' : 'lower'} is better)`;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values: data },
    facet: { column: { field: 'panel', type: 'nominal', title: null } },
    spec: {
      width: 180,
      height: 220,
      layer: [
        {
          mark: { type: 'bar' },
          encoding: {
            x: { field: 'path', type: 'nominal', title: null, sort: null },
            y: { field: 'median', type: 'quantitative', title: info?.unit ?? metric },
            color: { field: 'path', type: 'nominal', legend: null },
          },
        },
        {
          mark: { type: 'rule', strokeWidth: 1.5 },
          encoding: {
            x: { field: 'path', type: 'nominal', sort: null },
            y: { field: 'min', type: 'quantitative' },
            y2: { field: 'max' },
          },
        },
      ],
    },
    resolve: { scale: { y: 'independent' } },
  } as TopLevelSpec;
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
