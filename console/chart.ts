/**
 * A time-series chart of a device's numeric keys (uPlot): one series per key, x in
 * seconds as uPlot expects. `append` adds a live reading and drops points that fell out
 * of the window, without rebuilding the chart.
 */
const COLORS = ['#2f80ed', '#eb5757', '#27ae60', '#f2994a', '#9b51e0', '#56ccf2', '#6fcf97', '#bb6bd9'];

export class TimeChart {
  readonly plot: uPlot;
  private readonly xs: number[] = [];
  private readonly ys: Array<Array<number | null>>;

  constructor(
    container: HTMLElement,
    readonly keys: string[],
    points: Array<{ ts: number; values: Record<string, unknown> }>,
    /** Live window in ms (points older than now minus it are dropped); 0: keep all. */
    private readonly windowMs: number,
  ) {
    this.ys = keys.map(() => []);
    for (const p of points) this.push(p.ts, p.values);
    const width = Math.max(280, container.clientWidth);
    // A canvas cannot resolve `currentColor`: take the page's text colour (light or dark mode) now.
    const ink = getComputedStyle(container).color;
    this.plot = new uPlot(
      {
        width,
        height: 320,
        series: [{}, ...keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length] as string, width: 1.5, spanGaps: true }))],
        axes: [{ stroke: ink, grid: { stroke: 'rgba(128,128,128,0.2)' } }, { stroke: ink, grid: { stroke: 'rgba(128,128,128,0.2)' } }],
        scales: { x: { time: true } },
      },
      this.data(),
      container,
    );
    new ResizeObserver(() => this.plot.setSize({ width: Math.max(280, container.clientWidth), height: 320 })).observe(container);
  }

  private push(ts: number, values: Record<string, unknown>): void {
    this.xs.push(ts / 1000);
    this.keys.forEach((k, i) => {
      const v = values[k];
      (this.ys[i] as Array<number | null>).push(typeof v === 'number' ? v : null);
    });
  }

  private data(): uPlot.AlignedData {
    return [this.xs, ...this.ys] as uPlot.AlignedData;
  }

  /** Adds a reading (in time order; an older one is inserted at its place). */
  append(ts: number, values: Record<string, unknown>): void {
    const x = ts / 1000;
    if (this.xs.length === 0 || x >= (this.xs[this.xs.length - 1] as number)) this.push(ts, values);
    else {
      let i = this.xs.length;
      while (i > 0 && (this.xs[i - 1] as number) > x) i--;
      this.xs.splice(i, 0, x);
      this.keys.forEach((k, j) => (this.ys[j] as Array<number | null>).splice(i, 0, typeof values[k] === 'number' ? (values[k] as number) : null));
    }
    if (this.windowMs > 0) {
      const horizon = (Date.now() - this.windowMs) / 1000;
      let drop = 0;
      while (drop < this.xs.length && (this.xs[drop] as number) < horizon) drop++;
      if (drop > 0) {
        this.xs.splice(0, drop);
        for (const y of this.ys) y.splice(0, drop);
      }
    }
    this.plot.setData(this.data());
  }

  /** The last point: time (ms) and each key's value. */
  last(): { ts: number; values: Record<string, number | null> } | null {
    const n = this.xs.length;
    if (n === 0) return null;
    const values: Record<string, number | null> = {};
    this.keys.forEach((k, i) => (values[k] = (this.ys[i] as Array<number | null>)[n - 1] ?? null));
    return { ts: Math.round((this.xs[n - 1] as number) * 1000), values };
  }

  get points(): number {
    return this.xs.length;
  }

  destroy(): void {
    this.plot.destroy();
  }
}
