//! The `gatehouse` binary: parse the command line, set up logging, call the library.

use clap::Parser;
use gatehouse::cli::{Cli, Command};
use gatehouse::config::Config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Check { config } => match gatehouse::check::check(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(diags) => {
                eprintln!("{diags}");
                eprintln!("{} error(s)", diags.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Run { config, upgrade } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(d) => {
                    eprintln!("{d}");
                    return ExitCode::FAILURE;
                }
            };
            // The proxy's workers run their own runtimes; this one serves stats and signals.
            runtime(1, async move {
                let running = gatehouse::server::start(config, upgrade).await?;
                println!("{}", running.ready_line());
                running.run_until_signal().await
            })
        }
        Command::Reload { config } => with_config(&config, |c| {
            gatehouse::ops::reload(c).map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }),
        Command::Switch {
            config,
            service,
            colour,
            force,
            rollback,
        } => with_config(&config, |c| {
            if rollback {
                gatehouse::ops::rollback(c)?;
            } else {
                let colour = match colour.as_deref() {
                    Some("blue") => gatehouse::rules::Colour::Blue,
                    Some("green") => gatehouse::rules::Colour::Green,
                    other => anyhow::bail!("colour must be blue or green, not {other:?}"),
                };
                gatehouse::ops::switch(c, service.as_deref().unwrap_or_default(), colour, force)?;
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Explain {
            config,
            from,
            via_proxy,
            method,
            headers,
            sni,
            json,
            url,
        } => with_config(&config, |c| {
            let ask = gatehouse::ops::explain::Ask {
                url: url.clone(),
                method: method.clone(),
                headers: headers.clone(),
                from,
                via_proxy,
                sni: sni.clone(),
            };
            let e = gatehouse::ops::explain(c, &ask)?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                print!("{}", e.text());
            }
            Ok(ExitCode::SUCCESS)
        }),
        #[cfg(feature = "demo")]
        Command::Demo { workdir } => {
            let dir = match workdir {
                Some(d) => d,
                None => std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id())),
            };
            runtime(0, async move { gatehouse::demo::run(&dir).await })
        }
    }
}

fn with_config(
    path: &std::path::Path,
    f: impl FnOnce(&Config) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    match Config::load(path) {
        Ok(c) => f(&c).unwrap_or_else(|e| {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }),
        Err(d) => {
            eprintln!("{d}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: usize, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc: size classes keep long-lived connection state apart from the buffers of a
/// burst, so pages the burst freed can go back to the system whole; background purging
/// returns them within about a second (see `MALLOC_CONF`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc at start: purge freed pages after 1 s, on its own thread. Each
/// thread caches at least 64 blocks of every small size (default 20) and tidies its cache
/// every 512 KiB allocated (default 64 KiB): with 64 requests in flight, each holding an
/// 8 KiB response buffer, the default cache emptied and refilled from the arena (a new
/// slab per 8 KiB block) every few requests, about 1,300 instructions per request.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 115] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_nslots_small_min:64,tcache_gc_incr_bytes:524288\0";
