import { describe, expect, it } from 'vitest';
import { canonicalText, NumberValue, numberOfLiteral, numberProblem, numberText, parseJson, stringifyJson, valuesPackr } from './numbers.js';

const kept = (v: unknown): string | undefined => (v instanceof NumberValue ? v.value : undefined);

describe('numbers as DynamoDB has them', () => {
  it.each([
    ['21.5', 21.5],
    ['0.30000000000000004', 0.30000000000000004],
    ['1.50', 1.5],
    ['-0', -0],
    ['0e999', 0],
    ['9007199254740993', undefined],
    ['1e300', 1e300],
    ['5e-324', 5e-324],
  ])('%s is a double when one holds it exactly as written', (literal, double) => {
    const v = numberOfLiteral(literal);
    if (double === undefined) expect(v).toBeInstanceOf(NumberValue);
    else expect(v).toBe(double);
  });

  it.each([
    ['12345678901234567890', '12345678901234567890'],
    ['1.2345678901234567890e25', '12345678901234567890000000'],
    ['0.1000000000000000001', '0.1000000000000000001'],
    ['-0.0000000000000000000000123456789012345678', '-1.23456789012345678e-23'],
    ['123456789012345678901234567890123456789e10', '1.23456789012345678901234567890123456789e+48'],
    ['1e-400', '1e-400'],
    ['1e400', '1e+400'],
  ])('%s keeps its digits as %s', (literal, text) => {
    expect(kept(numberOfLiteral(literal))).toBe(text);
    expect(canonicalText(literal)).toBe(text);
  });

  it.each([
    ['1e300', /out of range/],
    ['5e-324', /out of range/],
    ['1e-400', /out of range/],
    ['1e126', /out of range/],
    ['-9e-131', /out of range/],
    ['123456789012345678901234567890123456789', /39 significant digits/],
    ['1.2345678901234567890123456789012345678e-130', /1e-165/],
  ])('%s cannot be stored', (literal, why) => {
    expect(numberProblem(numberOfLiteral(literal))).toMatch(why);
  });

  it.each(['0', '1e-130', '-1e-130', '9.9999999999999999999999999999999999999e125', '12345678901234567890123456789012345678', '100000000000000000000000000000000000000000'])('%s can', (literal) => {
    expect(numberProblem(numberOfLiteral(literal))).toBeUndefined();
  });

  it('writes N attributes that unmarshall reads as bigint for integers, and doubles as their own text', () => {
    expect(numberText(1e21)).toBe('1000000000000000000000');
    expect(numberText(1.5e37)).toBe('15000000000000000000000000000000000000');
    expect(numberText(1e40)).toBe('1e+40');
    expect(numberText(1e-7)).toBe('1e-7');
    expect(numberText(21.5)).toBe('21.5');
    expect(numberText(new NumberValue('12345678901234567890'))).toBe('12345678901234567890');
  });

  it('parses losslessly only where needed, with every key an own key and the last duplicate winning', () => {
    const v = parseJson('{"a":12345678901234567890,"__proto__":1,"constructor":{"x":0.1},"a":3,"b":1e-400}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['a', '__proto__', 'constructor', 'b']);
    expect(v['a']).toBe(3);
    expect(kept(v['b'])).toBe('1e-400');
    const plain = parseJson('{"temp":21.5,"e":"eee","n":123456789012345}') as Record<string, unknown>;
    expect(plain).toEqual({ temp: 21.5, e: 'eee', n: 123456789012345 });
  });

  it('writes kept digits back out as JSON numbers, and through msgpack', () => {
    const values = { big: new NumberValue('12345678901234567890'), nested: { value: 'x', n: new NumberValue('1.5e+40') }, s: 'a' };
    expect(stringifyJson(values)).toBe('{"big":12345678901234567890,"nested":{"value":"x","n":1.5e+40},"s":"a"}');
    expect(stringifyJson({ value: 'looks like one', n: 1 })).toBe('{"value":"looks like one","n":1}');
    const packr = valuesPackr();
    const back = packr.unpack(packr.pack([values])) as [typeof values];
    expect(kept(back[0].big)).toBe('12345678901234567890');
    expect(kept(back[0].nested.n)).toBe('1.5e+40');
  });
});
