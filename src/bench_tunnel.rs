//! `deorch bench tunnel`: the node-to-node tunnel's throughput
//! ([`crate::relocate::tunnel`], what carries a relocation's NBD and
//! migration streams and a fetched disk) beside a plain TCP stream over
//! the same loopback in the same run.
//!
//! Each path carries `--mib` MiB from a local writer to a local reader:
//!
//! * **tunnel**: writer ─TCP─► node A's splice ═Noise tunnel═► node B's
//!   splice ─TCP─► reader (three sockets, one seal and one open per
//!   frame, as a relocation's stream crosses two nodes);
//! * **plain TCP**: writer ─TCP─► reader (what QEMU's NBD client and
//!   server do when they talk directly, as in the raw QEMU path of
//!   `deorch bench relocate`).
//!
//! The paths alternate run by run; the figure is MiB/s from the first
//! byte written to the last byte read.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::gossip::channel::ChannelKey;
use crate::gossip::verify::AcceptAll;
use crate::identity::{Network, PrivateKey};
use crate::relocate::tunnel::{self, TunnelKey};

/// `deorch bench tunnel`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB carried per run.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Runs per path (alternating).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

fn key(k: &PrivateKey) -> TunnelKey {
    TunnelKey {
        key: Arc::new(ChannelKey::new(k, "bench")),
        cluster: "bench".into(),
        verifier: Arc::new(AcceptAll),
    }
}

/// Write `bytes` into `s` (1 MiB writes, as `qemu-img convert` and the
/// mirror do), then close it.
async fn write_all(mut s: TcpStream, bytes: u64) -> std::io::Result<()> {
    let block = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await
}

/// Read `s` to its end; the bytes read.
async fn read_all(mut s: TcpStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

/// One run through a tunnel: seconds.
async fn through_tunnel(bytes: u64) -> anyhow::Result<f64> {
    let (ka, kb) = (
        PrivateKey::generate(Network::Mainnet),
        PrivateKey::generate(Network::Mainnet),
    );
    let (a, b) = (key(&ka), key(&kb));
    let b_id = b.key.id().clone();
    // Node B: accepts the tunnel and splices it to the reader.
    let node_b = TcpListener::bind("127.0.0.1:0").await?;
    let node_b_at = node_b.local_addr()?;
    let reader = TcpListener::bind("127.0.0.1:0").await?;
    let reader_at = reader.local_addr()?;
    let read = tokio::spawn(async move {
        let (s, _) = reader.accept().await?;
        read_all(s).await
    });
    let b_side = tokio::spawn(async move {
        let (s, _) = node_b.accept().await?;
        let (t, _) = tunnel::accept(s, &b).await?;
        let out = TcpStream::connect(reader_at).await?;
        t.splice(out).await?;
        Ok::<_, anyhow::Error>(())
    });
    // Node A: the writer's local stream, spliced into the tunnel.
    let t = tunnel::connect(TcpStream::connect(node_b_at).await?, &a, &b_id, b"bench").await?;
    let local = TcpListener::bind("127.0.0.1:0").await?;
    let local_at = local.local_addr()?;
    let t0 = Instant::now();
    let write =
        tokio::spawn(async move { write_all(TcpStream::connect(local_at).await?, bytes).await });
    let (plain, _) = local.accept().await?;
    let a_side = tokio::spawn(async move { t.splice(plain).await });
    let got = read.await??;
    let took = t0.elapsed().as_secs_f64();
    write.await??;
    a_side.await??;
    b_side.await??;
    anyhow::ensure!(got == bytes, "the tunnel carried {got} of {bytes} bytes");
    Ok(took)
}

/// One run over plain TCP: seconds.
async fn plain_tcp(bytes: u64) -> anyhow::Result<f64> {
    let reader = TcpListener::bind("127.0.0.1:0").await?;
    let at = reader.local_addr()?;
    let t0 = Instant::now();
    let write = tokio::spawn(async move { write_all(TcpStream::connect(at).await?, bytes).await });
    let (s, _) = reader.accept().await?;
    let got = read_all(s).await?;
    let took = t0.elapsed().as_secs_f64();
    write.await??;
    anyhow::ensure!(got == bytes, "plain TCP carried {got} of {bytes} bytes");
    Ok(took)
}

/// `deorch bench tunnel`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bytes = args.mib << 20;
    let mib = args.mib as f64;
    let (mut tun, mut raw) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..args.runs {
            tun.push(mib / through_tunnel(bytes).await?);
            raw.push(mib / plain_tcp(bytes).await?);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let p = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "{:.0} | {:.0} | {:.0}",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    println!(
        "{} MiB per run, {} runs per path, alternating\n",
        args.mib, args.runs
    );
    println!("| path | MiB/s min | p50 | max |\n|---|---|---|---|");
    println!("| tunnel (two splices, Noise) | {} |", p(&mut tun));
    println!("| plain TCP | {} |", p(&mut raw));
    Ok(())
}
