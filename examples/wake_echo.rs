//! What one wake-up from idle costs, by how a UDP echo server waits for its datagram: blocked
//! in `recv_from`, in `poll(2)` before a non-blocking read, or as a task of a tokio runtime
//! (multi-thread, as dtun runs, or current-thread). `scripts/bench/wake.sh` runs two servers
//! side by side in one pair of namespaces and prints each one's median echo time.
//!
//!   wake_echo block|poll|tokio|tokio-ct ADDR   echo every datagram back, forever
//!   wake_echo client ADDR COUNT                one 100-byte datagram every 50 ms, then prints
//!                                              the echo times (median, 10th, 90th percentile)

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: wake_echo block|poll|tokio|tokio-ct ADDR | client ADDR COUNT";
    let (mode, addr) = match (args.get(1), args.get(2)) {
        (Some(m), Some(a)) => (m.as_str(), a.clone()),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let result = match mode {
        "block" => block(&addr),
        "poll" => poll_loop(&addr),
        "tokio" => tokio_echo(tokio::runtime::Builder::new_multi_thread(), addr.clone()),
        "tokio-ct" => tokio_echo(tokio::runtime::Builder::new_current_thread(), addr.clone()),
        "client" => {
            let count = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(200);
            client(&addr, count)
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("wake_echo {mode} {addr}: {e}");
        std::process::exit(1);
    }
}

fn block(addr: &str) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], peer)?;
    }
}

fn poll_loop(addr: &str) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    let mut buf = [0u8; 2048];
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::NONE)?;
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..n], peer)?;
        }
    }
}

fn tokio_echo(mut builder: tokio::runtime::Builder, addr: String) -> std::io::Result<()> {
    builder.enable_all().build()?.block_on(async move {
        // Spawned, as dtun's loops are, so the multi-thread runtime runs it on a worker.
        tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind(addr).await?;
            let mut buf = [0u8; 2048];
            loop {
                let (n, peer) = sock.recv_from(&mut buf).await?;
                sock.send_to(&buf[..n], peer).await?;
            }
        })
        .await
        .map_err(std::io::Error::other)?
    })
}

fn client(addr: &str, count: usize) -> std::io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut times = Vec::with_capacity(count);
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(50));
        let sent = Instant::now();
        sock.send(&[1u8; 100])?;
        if sock.recv(&mut buf).is_ok() {
            times.push(sent.elapsed().as_micros());
        }
    }
    if times.is_empty() {
        return Err(std::io::Error::other("no echo came back"));
    }
    times.sort_unstable();
    let at = |q: usize| times[(times.len() - 1) * q / 100];
    println!(
        "n={} median={}us p10={}us p90={}us",
        times.len(),
        at(50),
        at(10),
        at(90)
    );
    Ok(())
}
