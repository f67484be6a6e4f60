use super::mock::*;
use super::request::SPARES;
use super::*;

#[test]
fn empty_connection_writes_nothing() {
    let ctx = ctx();
    assert!(run(&ctx, b"", 1).is_empty());
    assert_eq!(ctx.curr_conns.load(Ordering::Relaxed), 0);
    assert_eq!(ctx.total_conns.get(), 1);
}

#[test]
fn pipelined_requests_get_one_write() {
    let ctx = ctx();
    let mut input = Vec::new();
    for i in 0..16 {
        input.extend_from_slice(format!("set k{i} 0 0 1\r\nx\r\n").as_bytes());
    }
    let mut m = Mock::new(&input, usize::MAX);
    handle_conn(&mut m, &ctx).unwrap();
    assert_eq!(m.output, b"STORED\r\n".repeat(16));
    assert_eq!(m.writes, 1);
}

#[test]
fn discard_and_direct_reads_are_bounded() {
    let ctx = ctx();
    let mut m = Mock::new(&vec![b'z'; 1 << 20], 4096);
    let mut c = Conn::new(&mut m, &ctx);
    assert!(c.fill(100).unwrap());
    assert!(c.data().len() <= INPUT_INITIAL);
    assert!(c.discard(1000).unwrap());
    let mut dst = vec![0u8; 500_000];
    assert!(c.read_exact_into(&mut dst).unwrap());
    assert!(dst.iter().all(|&b| b == b'z'));
    assert!(c.buf.len() <= INPUT_INITIAL);
    assert!(!c.discard(1 << 21).unwrap(), "runs out of input");
    c.put(b"x");
    assert_eq!(c.pending(), b"x");
}

#[test]
fn blocks_grow_as_they_arrive_and_give_the_budget_back() {
    let mut ctx = ctx();
    ctx.buffers = BufferBudget::new(256 * 1024);
    let mut input = b"set k 0 0 5\r\n".to_vec();
    input.extend_from_slice(&vec![b'v'; 200_000]);
    let mut m = Mock::new(&input, 1000);
    let mut c = Conn::new(&mut m, &ctx);
    assert!(c.fill(INPUT_INITIAL).unwrap());
    c.consume(13);
    match c.read_block(100_000).unwrap() {
        Block::Data(v) => {
            assert_eq!(v.len(), 100_000);
            assert!(v.capacity() <= 100_000 + 16, "no slack past the block");
            assert!(v.iter().all(|&b| b == b'v'));
        }
        other => panic!("expected data, got {other:?}"),
    }
    assert_eq!(ctx.buffers.used(), 0);
    // Over the budget: refused, the rest of the block dropped.
    match c.read_block(100_001).unwrap() {
        Block::Eof => {}
        other => panic!("the input ends inside the block: {other:?}"),
    }
    assert_eq!(ctx.buffers.used(), 0);
    let mut m = Mock::new(&vec![b'w'; 400_000], 4096);
    let mut c = Conn::new(&mut m, &ctx);
    assert!(matches!(c.read_block(300_000).unwrap(), Block::NoMemory));
    assert_eq!(ctx.buffer_oom.get(), 1);
    assert_eq!(ctx.buffers.used(), 0);
    let mut rest = vec![0u8; 100_000];
    assert!(
        c.read_exact_into(&mut rest).unwrap(),
        "only the block was dropped"
    );
    assert!(!c.discard(1).unwrap());
}

/// Request-mode turns pass their worker's buffers on: the second turn
/// gets the first one's input and output buffers back (so it neither
/// zeroes nor allocates them), and between turns the worker keeps one
/// pair.
#[test]
fn request_turns_reuse_their_workers_spare_buffers() {
    use weave::server::Next;
    let ctx = Arc::new(ctx());
    let mut session = Session::new(ctx.clone(), 7, "tcp:127.0.0.1:1".into());
    let spares = || {
        SPARES.with(|s| {
            let s = s.borrow();
            let v: Vec<_> = s
                .pairs
                .iter()
                .map(|(i, o)| (i.as_ptr(), o.as_ptr(), i.len()))
                .collect();
            v
        })
    };
    assert!(spares().is_empty(), "a new thread has no spares");
    let mut m = Mock::new(b"set a 0 0 1\r\nx\r\n", usize::MAX);
    assert_eq!(handle_request(&mut m, &mut session).unwrap(), Next::Idle);
    assert_eq!(m.output, b"STORED\r\n");
    let first = spares();
    assert_eq!(first.len(), 1);
    assert!(first[0].2 >= FIRST_READ);
    let mut m = Mock::new(b"get a\r\n", usize::MAX);
    assert_eq!(handle_request(&mut m, &mut session).unwrap(), Next::Idle);
    assert_eq!(m.output, b"VALUE a 0 1\r\nx\r\nEND\r\n");
    assert_eq!(
        spares(),
        first,
        "the same pair, the input buffer at its length"
    );
}
