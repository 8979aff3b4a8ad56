//! Kills nats-server (SIGKILL) while a bare async-nats durable pull consumer
//! acknowledges under load, then counts the kills that left the consumer's
//! state file (`o.dat`) empty and the restarts whose ack floor went back
//! more than a few acks. No jetway involved: this is the server alone.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn spawn(bin: &str, port: u16, dir: &str) -> Result<Child> {
    let port = port.to_string();
    let args = ["-a", "127.0.0.1", "-p", &port, "-js", "-sd", dir];
    Ok(Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

async fn connect(port: u16) -> jetstream::Context {
    loop {
        if let Ok(c) = async_nats::connect(format!("nats://127.0.0.1:{port}")).await {
            return jetstream::new(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ack_floor(js: &jetstream::Context) -> Result<u64> {
    let stream = js.get_stream("ORDERS").await?;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer("c1").await?;
    Ok(consumer.info().await?.ack_floor.stream_sequence)
}

/// One kill; `(state file size after the kill, ack floor before, after)`.
async fn run(
    bin: &str,
    port: u16,
    dir: &str,
    kill_after: Duration,
) -> Result<(Option<u64>, u64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut server = spawn(bin, port, dir)?;
    let js = connect(port).await;
    let config = stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await?;
    let durable = pull::Config {
        durable_name: Some("c1".into()),
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let consumer = stream.get_or_create_consumer("c1", durable).await?;
    let publisher = js.clone();
    let publish = tokio::spawn(async move {
        for i in 0u64.. {
            if publisher
                .publish(format!("orders.{i}"), "x".into())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    });
    let consume = tokio::spawn(async move {
        let Ok(mut messages) = consumer.messages().await else {
            return;
        };
        while let Some(Ok(m)) = messages.next().await {
            let _ = m.ack().await;
        }
    });
    tokio::time::sleep(kill_after).await;
    let before = ack_floor(&js).await?;
    server.kill()?;
    server.wait()?;
    publish.abort();
    consume.abort();
    let state = format!("{dir}/jetstream/$G/streams/ORDERS/obs/c1/o.dat");
    let size = std::fs::metadata(state).ok().map(|m| m.len());
    let mut server = spawn(bin, port, dir)?;
    let after = ack_floor(&connect(port).await).await;
    server.kill()?;
    server.wait()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok((size, before, after?))
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = std::env::var("NSB").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join("consumer_state_kill");
    let (mut emptied, mut reverted) = (0, 0);
    for n in 0..runs {
        let kill_after = Duration::from_millis(300 + n * 37 % 700);
        let port = 14222 + (n % 100) as u16;
        let (size, before, after) = run(&bin, port, &dir.to_string_lossy(), kill_after).await?;
        emptied += u64::from(size == Some(0));
        reverted += u64::from(after + 64 < before);
        println!(
            "kill {n} after {kill_after:?}: o.dat {size:?} bytes, ack floor {before} -> {after}"
        );
    }
    println!(
        "{bin}: {runs} kills, state file left empty {emptied}, ack floor went back {reverted}"
    );
    Ok(())
}
