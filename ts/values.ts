/**
 * Recorded Python values as JavaScript values, and the decoding of the compact JSON the
 * native reader uses for values that are not plain numbers.
 *
 * Mapping: None → `null`; bool → `boolean`; int → `bigint`; float → `number`; str →
 * `string` (lone surrogates kept as lone UTF-16 surrogates); bytes → `Uint8Array`;
 * list → `PyValue[]`; tuple → {@link PyTuple}; dict → {@link PyDict}; an object that does
 * not exist at replay (fd, socket) → {@link PyHandle}; a secret that was not stored →
 * {@link PyRedacted}.
 */

/** A Python tuple. */
export interface PyTuple {
  readonly type: "tuple";
  readonly items: PyValue[];
}

/** A Python dict: its items in insertion order (keys may be any value). */
export interface PyDict {
  readonly type: "dict";
  readonly entries: [PyValue, PyValue][];
}

/** An object that will not exist at replay (file descriptor, socket, connection). */
export interface PyHandle {
  readonly type: "handle";
  readonly id: number;
}

/** A secret-looking value that was not stored; only its length was kept. */
export interface PyRedacted {
  readonly type: "redacted";
  readonly length: number;
}

/** An instance of a named type, rebuilt at replay as `type(*state)` (e.g. `os.stat_result`). */
export interface PyObject {
  readonly type: "object";
  /** `module:qualname` */
  readonly typeName: string;
  readonly state: PyValue;
}

export type PyValue =
  | null
  | boolean
  | bigint
  | number
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PyHandle
  | PyRedacted
  | PyObject;

/** The JSON shape the native reader writes (see `write_value` in crates/node). */
type Wire = null | boolean | number | string | [string, unknown];

function bytesFromBase64(b64: string): Uint8Array {
  const buf = Buffer.from(b64, "base64");
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Decodes WTF-8 (UTF-8 that may encode lone surrogates) into a JS string. */
export function decodeWtf8(bytes: Uint8Array): string {
  const units: number[] = [];
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const b0 = bytes[i] as number;
    let cp: number;
    if (b0 < 0x80) {
      cp = b0;
      i += 1;
    } else if (b0 < 0xe0) {
      cp = ((b0 & 0x1f) << 6) | ((bytes[i + 1] ?? 0) & 0x3f);
      i += 2;
    } else if (b0 < 0xf0) {
      cp = ((b0 & 0x0f) << 12) | (((bytes[i + 1] ?? 0) & 0x3f) << 6) | ((bytes[i + 2] ?? 0) & 0x3f);
      i += 3;
    } else {
      cp =
        ((b0 & 0x07) << 18) |
        (((bytes[i + 1] ?? 0) & 0x3f) << 12) |
        (((bytes[i + 2] ?? 0) & 0x3f) << 6) |
        ((bytes[i + 3] ?? 0) & 0x3f);
      i += 4;
    }
    if (cp >= 0x10000) {
      cp -= 0x10000;
      units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
    } else {
      units.push(cp);
    }
    if (units.length > 4096) {
      out += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  return out + String.fromCharCode(...units);
}

function signedHex(hex: string): bigint {
  return hex.startsWith("-") ? -BigInt(`0x${hex.slice(1)}`) : BigInt(`0x${hex}`);
}

function floatOf(x: unknown): number {
  if (typeof x === "number") return x;
  if (x === "nan") return NaN;
  if (x === "inf") return Infinity;
  if (x === "-inf") return -Infinity;
  throw new TypeError(`bad float in trace data: ${String(x)}`);
}

/** Decodes one value from the native reader's JSON encoding. */
export function decodeValue(wire: unknown): PyValue {
  const w = wire as Wire;
  if (w === null || typeof w === "boolean" || typeof w === "string") return w;
  if (typeof w === "number") return BigInt(w);
  if (!Array.isArray(w)) throw new TypeError("bad value in trace data");
  const [tag, body] = w;
  switch (tag) {
    case "x":
      return signedHex(body as string);
    case "f":
      return floatOf(body);
    case "b":
      return bytesFromBase64(body as string);
    case "s":
      return decodeWtf8(bytesFromBase64(body as string));
    case "l":
      return (body as unknown[]).map(decodeValue);
    case "t":
      return { type: "tuple", items: (body as unknown[]).map(decodeValue) };
    case "d": {
      const flat = body as unknown[];
      const entries: [PyValue, PyValue][] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) entries.push([decodeValue(flat[i]), decodeValue(flat[i + 1])]);
      return { type: "dict", entries };
    }
    case "h":
      return { type: "handle", id: body as number };
    case "r":
      return { type: "redacted", length: body as number };
    case "o": {
      const [typeName, state] = body as [string, unknown];
      return { type: "object", typeName, state: decodeValue(state) };
    }
    default:
      throw new TypeError(`unknown value tag in trace data: ${String(tag)}`);
  }
}

/** A short, Python-like rendering of a value, for reports. */
export function formatValue(value: PyValue, maxLength = 80): string {
  const text = render(value);
  return text.length > maxLength ? `${text.slice(0, maxLength - 1)}…` : text;
}

function render(value: PyValue): string {
  if (value === null) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    if (Number.isNaN(value)) return "nan";
    if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
    return Number.isInteger(value) && Math.abs(value) < 1e16 ? value.toFixed(1) : String(value);
  }
  if (typeof value === "string") return JSON.stringify(value).replace(/^"|"$/g, "'");
  if (value instanceof Uint8Array) return `b'${Buffer.from(value).toString("latin1").replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)}'`;
  if (Array.isArray(value)) return `[${value.map(render).join(", ")}]`;
  switch (value.type) {
    case "tuple":
      return value.items.length === 1 ? `(${render(value.items[0] as PyValue)},)` : `(${value.items.map(render).join(", ")})`;
    case "dict":
      return `{${value.entries.map(([k, v]) => `${render(k)}: ${render(v)}`).join(", ")}}`;
    case "handle":
      return `<handle ${value.id}>`;
    case "redacted":
      return `<redacted, ${value.length} bytes>`;
    case "object":
      return `${value.typeName.replace(":", ".")}${render(value.state)}`;
  }
}
