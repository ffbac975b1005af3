/**
 * `retrace pack DIR [-o FILE]` and `retrace unpack FILE [-o DIR]`: a recording as one file
 * to share. The archive is a plain ustar tar stream compressed with zstd, so
 * `zstd -d < rec.tar.zst | tar x` also unpacks it.
 */
import { createReadStream, createWriteStream, existsSync, lstatSync, mkdirSync, readdirSync } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { RetraceError, describe, errnoCode } from "./errors.js";
import { readMetadata } from "./meta.js";

const BLOCK = 512;

export interface PackOptions {
  dir: string;
  output?: string | undefined;
  force?: boolean | undefined;
}

export interface UnpackOptions {
  file: string;
  output?: string | undefined;
}

interface Entry {
  /** Path inside the archive, `/`-separated, starting with the recording's name. */
  name: string;
  abs: string;
  type: "file" | "dir";
  size: number;
  mode: number;
  mtime: number;
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

/** One ustar header block. */
export function tarHeader(entry: Pick<Entry, "name" | "type" | "size" | "mode" | "mtime">): Buffer {
  const block = Buffer.alloc(BLOCK);
  let name = entry.type === "dir" ? `${entry.name}/` : entry.name;
  let prefix = "";
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf("/", name.length - 2);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
    if (cut < 0 || Buffer.byteLength(name) > 100 || Buffer.byteLength(prefix) > 155) {
      throw new RetraceError(`path too long to pack: ${entry.name}`, "rename the recording directory to something shorter", 1);
    }
  }
  if (entry.size >= 8 ** 11) {
    throw new RetraceError(`file too large to pack (8 GiB limit): ${entry.name}`, "share the directory as it is", 1);
  }
  block.write(name, 0, 100, "utf8");
  block.write(octal(entry.mode & 0o7777, 8), 100, "ascii");
  block.write(octal(0, 8), 108, "ascii");
  block.write(octal(0, 8), 116, "ascii");
  block.write(octal(entry.type === "dir" ? 0 : entry.size, 12), 124, "ascii");
  block.write(octal(Math.floor(entry.mtime / 1000), 12), 136, "ascii");
  block.write("        ", 148, "ascii");
  block.write(entry.type === "dir" ? "5" : "0", 156, "ascii");
  block.write("ustar\0", 257, "ascii");
  block.write("00", 263, "ascii");
  block.write(prefix, 345, 155, "utf8");
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return block;
}

function listEntries(root: string, name: string): Entry[] {
  const out: Entry[] = [];
  const walk = (abs: string, rel: string) => {
    const st = lstatSync(abs);
    if (st.isDirectory()) {
      out.push({ name: rel, abs, type: "dir", size: 0, mode: st.mode, mtime: st.mtimeMs });
      for (const child of readdirSync(abs).sort()) walk(join(abs, child), `${rel}/${child}`);
    } else if (st.isFile()) {
      out.push({ name: rel, abs, type: "file", size: st.size, mode: st.mode, mtime: st.mtimeMs });
    }
    // Anything else (symlinks, sockets) is not part of a recording and is left out.
  };
  walk(root, name);
  return out;
}

async function* tarStream(entries: Entry[]): AsyncGenerator<Buffer> {
  for (const entry of entries) {
    yield tarHeader(entry);
    if (entry.type !== "file") continue;
    let written = 0;
    for await (const chunk of createReadStream(entry.abs)) {
      const buf = chunk as Buffer;
      const take = Math.min(buf.length, entry.size - written);
      if (take > 0) yield take === buf.length ? buf : buf.subarray(0, take);
      written += take;
    }
    if (written < entry.size) {
      throw new RetraceError(`${entry.abs} shrank while packing`, "pack the recording when the program has finished", 1);
    }
    const pad = (BLOCK - (entry.size % BLOCK)) % BLOCK;
    if (pad > 0) yield Buffer.alloc(pad);
  }
  yield Buffer.alloc(BLOCK * 2);
}

async function zstdModule(): Promise<typeof import("zstd-napi")> {
  try {
    return await import("zstd-napi");
  } catch (err) {
    throw new RetraceError(
      `zstd compression is not available (${describe(err)})`,
      "reinstall retrace so that its zstd-napi dependency builds (`npm rebuild zstd-napi`)",
      1,
    );
  }
}

/** Runs `retrace pack`. Prints the archive's path to stdout. */
export async function pack(opts: PackOptions): Promise<void> {
  const dir = resolve(opts.dir);
  readMetadata(dir, 1);
  const name = basename(dir);
  const output = resolve(opts.output ?? `${name}.tar.zst`);
  if (existsSync(output) && !opts.force) {
    throw new RetraceError(`${opts.output ?? `${name}.tar.zst`} already exists`, "choose another file with -o, or pass --force", 1);
  }
  if (output.startsWith(`${dir}${sep}`)) {
    throw new RetraceError("the archive cannot be written inside the recording", "choose a file outside the recording directory with -o", 1);
  }
  const { CompressStream } = await zstdModule();
  const entries = listEntries(dir, name);
  try {
    await pipeline(Readable.from(tarStream(entries)), new CompressStream({ compressionLevel: 9 }), createWriteStream(output));
  } catch (err) {
    if (err instanceof RetraceError) throw err;
    throw new RetraceError(`cannot write ${output}: ${describe(err)}`, "check the destination directory", 1);
  }
  process.stdout.write(`${output}\n`);
}

/** Reads exactly `n` bytes at a time from an async byte stream. */
class ByteReader {
  private buffered: Buffer[] = [];
  private length = 0;
  constructor(private readonly source: AsyncIterator<Buffer>) {}

  async read(n: number): Promise<Buffer | undefined> {
    while (this.length < n) {
      const next = await this.source.next();
      if (next.done) return undefined;
      this.buffered.push(next.value);
      this.length += next.value.length;
    }
    const all = this.buffered.length === 1 ? (this.buffered[0] as Buffer) : Buffer.concat(this.buffered);
    this.buffered = all.length > n ? [all.subarray(n)] : [];
    this.length = all.length - n;
    return all.subarray(0, n);
  }
}

function field(block: Buffer, start: number, len: number): string {
  const raw = block.subarray(start, start + len);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? len : nul).toString("utf8");
}

/** Runs `retrace unpack`. Prints the recording directory's path to stdout. */
export async function unpack(opts: UnpackOptions): Promise<void> {
  const file = resolve(opts.file);
  if (!existsSync(file)) {
    throw new RetraceError(`${opts.file} does not exist`, "pass an archive written by `retrace pack`", 1);
  }
  const { DecompressStream } = await zstdModule();
  const damaged = (what: string) =>
    new RetraceError(`${opts.file} is not a retrace archive: ${what}`, "pass an archive written by `retrace pack`", 1);
  const stream = createReadStream(file).pipe(new DecompressStream());
  const reader = new ByteReader(stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
  let target: string | undefined;
  let top: string | undefined;
  try {
    for (;;) {
      const header = await reader.read(BLOCK);
      if (header === undefined) throw damaged("it ends early");
      if (header.every((b) => b === 0)) break;
      if (field(header, 257, 6) !== "ustar") throw damaged("bad header");
      const prefix = field(header, 345, 155);
      const name = (prefix ? `${prefix}/` : "") + field(header, 0, 100);
      const size = parseInt(field(header, 124, 12).trim() || "0", 8);
      const type = String.fromCharCode(header[156] ?? 0);
      const parts = name.split("/").filter((p) => p !== "");
      if (parts.length === 0 || parts.some((p) => p === ".." || p === ".") || name.startsWith("/")) {
        throw damaged(`unsafe path ${name}`);
      }
      if (top === undefined) {
        top = parts[0] as string;
        target = resolve(opts.output ?? top);
        if (existsSync(target) && readdirSync(target).length > 0) {
          throw new RetraceError(`${opts.output ?? top} already exists and is not empty`, "choose another directory with -o", 1);
        }
      } else if (parts[0] !== top) {
        throw damaged("it holds more than one directory");
      }
      const dest = join(target as string, ...parts.slice(1));
      if (type === "5") {
        mkdirSync(dest, { recursive: true });
      } else if (type === "0" || type === "\0") {
        mkdirSync(dirname(dest), { recursive: true });
        const out = createWriteStream(dest);
        let left = size;
        while (left > 0) {
          const chunk = await reader.read(Math.min(left, 1 << 20));
          if (chunk === undefined) throw damaged("it ends inside a file");
          if (!out.write(chunk)) await new Promise<void>((r) => out.once("drain", () => r()));
          left -= chunk.length;
        }
        await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
      } else {
        throw damaged(`unexpected entry type ${JSON.stringify(type)}`);
      }
      const pad = (BLOCK - (size % BLOCK)) % BLOCK;
      if (type !== "5" && pad > 0 && (await reader.read(pad)) === undefined) throw damaged("it ends early");
    }
  } catch (err) {
    if (err instanceof RetraceError) throw err;
    const code = errnoCode(err);
    throw new RetraceError(
      code === undefined ? `${opts.file} is not a retrace archive: ${describe(err)}` : `cannot unpack ${opts.file}: ${describe(err)}`,
      "pass an archive written by `retrace pack`",
      1,
    );
  }
  if (target === undefined) throw damaged("it is empty");
  process.stdout.write(`${target}\n`);
}
