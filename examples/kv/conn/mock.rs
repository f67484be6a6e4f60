use super::*;

/// A scripted stream.
#[derive(Debug)]
pub struct Mock {
    input: Vec<u8>,
    pos: usize,
    chunk: usize,
    /// Everything the server wrote.
    pub output: Vec<u8>,
    /// Number of `write` calls (to check batching).
    pub writes: usize,
}

impl Mock {
    /// A stream that returns `input` in reads of at most `chunk` bytes.
    pub fn new(input: &[u8], chunk: usize) -> Mock {
        Mock {
            input: input.to_vec(),
            pos: 0,
            chunk,
            output: Vec::new(),
            writes: 0,
        }
    }
}

impl Read for Mock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Mock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A context on a manual clock with a 1 MiB item limit.
pub fn ctx() -> Ctx {
    ctx_with(64 << 20, 1 << 20)
}

/// A context with the given memory and item limits.
pub fn ctx_with(mem: usize, item_max: usize) -> Ctx {
    let store = Store::with_clock(
        mem,
        crate::store::Clock::Manual(AtomicU64::new(1_700_000_000)),
    );
    Ctx::new(Arc::new(store), item_max)
}

/// Runs a whole session over `ctx` and returns what the server wrote.
pub fn run(ctx: &Ctx, input: &[u8], chunk: usize) -> Vec<u8> {
    let mut m = Mock::new(input, chunk);
    handle_conn(&mut m, ctx).expect("handler failed");
    m.output
}
