/** A growable byte buffer with LEB128 varints, and its reader: the block codec's plumbing. */

const TWO_32 = 2 ** 32;

export class ByteWriter {
  private buf: Buffer;
  private at = 0;

  constructor(initial = 1024) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  get length(): number {
    return this.at;
  }

  /** Empties the writer for reuse (a buffer returned by {@link finish} is overwritten). */
  reset(): void {
    this.at = 0;
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.at++] = v;
  }

  /** An unsigned integer up to 2^53, 7 bits a byte. */
  varint(v: number): void {
    this.room(8);
    while (v >= 0x80) {
      this.buf[this.at++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.at++] = v;
  }

  /** A signed integer (|v| < 2^52), zigzag-mapped so small magnitudes take one byte. */
  zigzag(v: number): void {
    this.varint(v >= 0 ? v * 2 : -v * 2 - 1);
  }

  f64(v: number): void {
    this.room(8);
    this.buf.writeDoubleLE(v, this.at);
    this.at += 8;
  }

  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.at);
    this.at += b.length;
  }

  /** A length-prefixed UTF-8 string. */
  string(s: string): void {
    const n = Buffer.byteLength(s);
    this.varint(n);
    this.room(n);
    this.buf.write(s, this.at, 'utf8');
    this.at += n;
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.at);
  }
}

export class ByteReader {
  private at = 0;

  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.at >= this.buf.length;
  }

  /** Bytes read so far. */
  get offset(): number {
    return this.at;
  }

  private need(n: number): void {
    if (this.at + n > this.buf.length) throw new RangeError(`block truncated: ${n} more bytes needed at ${this.at} of ${this.buf.length}`);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.at++] as number;
  }

  varint(): number {
    let v = 0;
    let scale = 1;
    for (;;) {
      const b = this.u8();
      v += (b & 0x7f) * scale;
      if (b < 0x80) return v;
      scale *= 0x80;
      if (scale > TWO_32 * 2 ** 21) throw new RangeError('varint longer than 53 bits');
    }
  }

  zigzag(): number {
    const z = this.varint();
    return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
  }

  f64(): number {
    this.need(8);
    const v = this.buf.readDoubleLE(this.at);
    this.at += 8;
    return v;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }

  string(): string {
    const n = this.varint();
    return this.bytes(n).toString('utf8');
  }
}
