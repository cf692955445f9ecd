/**
 * `target` with some of its methods replaced. A proxy rather than a subclass or a wrapper
 * object: implementations keep state in private fields, so every other method must run on
 * the original instance (bound once per method, not per call — some sit on hot paths).
 */
export function withOverrides<T extends object>(target: T, overrides: Partial<T>): T {
  const bound = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(t, prop) {
      if (Object.hasOwn(overrides, prop)) return overrides[prop as keyof T];
      const value: unknown = Reflect.get(t, prop, t);
      if (typeof value !== 'function') return value;
      let fn = bound.get(prop);
      if (fn === undefined) bound.set(prop, (fn = (value as (...args: unknown[]) => unknown).bind(t)));
      return fn;
    },
  });
}
