import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/**
 * Processes a test starts, stopped by PID when the test is done. Each started process is
 * tracked so a failing test still cleans up what it started (and nothing else).
 */
export class ProcessGroup {
  private readonly children: ChildProcess[] = [];

  start(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.push(child);
    return child;
  }

  /** SIGTERM each process started here, then SIGKILL whatever is still alive after graceMs. */
  async stopAll(graceMs = 3000): Promise<void> {
    await Promise.all(this.children.map((c) => stopChild(c, graceMs)));
    this.children.length = 0;
  }
}

export async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Collects a child's stdout/stderr for error messages. */
export function captureOutput(child: ChildProcess): () => string {
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  return () => out;
}
