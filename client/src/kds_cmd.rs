//! `veil kds fetch`: fills a collateral cache on a connected machine, for verifiers that
//! then run with `--offline` (an air-gapped broker, a CI job without egress).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use veil_attestation::kds::{self, VcekRequest};
use veil_attestation::Product;

use crate::kds::{Collateral, KdsArgs};
use crate::remote_cmd::runtime;
use crate::report_cmd::load_report;
use crate::CmdResult;

/// `veil kds …`
#[derive(Subcommand)]
pub enum KdsCommand {
    /// Fetch a report's VCEK, its product's CRL and ASK/ARK into the cache (what is
    /// already cached and current is not fetched again); with `--offline`, check that the
    /// cache holds them all.
    Fetch(FetchArgs),
}

/// `veil kds fetch`
#[derive(Args)]
pub struct FetchArgs {
    /// The report: raw (1184 bytes), hex, or an evidence JSON file.
    pub report: PathBuf,
    /// The product, for a v2 report (which does not say): Milan or Genoa.
    #[arg(long)]
    pub product: Option<String>,
    /// `--kds-url`, `--cache`, `--offline`.
    #[command(flatten)]
    pub kds: KdsArgs,
}

/// Runs `veil kds`.
///
/// # Errors
/// Whatever could not be fetched or cached, named.
pub fn run(cmd: KdsCommand) -> CmdResult {
    match cmd {
        KdsCommand::Fetch(args) => Ok(fetch(&args)?),
    }
}

fn fetch(args: &FetchArgs) -> anyhow::Result<()> {
    let (report, _) = load_report(&args.report)?;
    let named = args
        .product
        .as_deref()
        .map(|name| {
            Product::from_name(name)
                .filter(|p| *p != Product::Mock)
                .ok_or_else(|| anyhow!("--product {name:?} is not Milan, Genoa or Turin"))
        })
        .transpose()?;
    let product = match (kds::report_product(&report), named) {
        (Some(found), Some(named)) if found != named => {
            bail!("--product {named} contradicts the report, which names {found}")
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            bail!("this v2 report does not say whether it is Milan or Genoa: pass --product")
        }
    };
    let collateral = Collateral::new(&args.kds);
    let cache = collateral
        .cache()
        .ok_or_else(|| anyhow!("no cache directory: pass --cache DIR (or set HOME)"))?
        .to_owned();
    let request = VcekRequest::from_report(&report, product)?;
    let now = SystemTime::now();
    let show = |what: &str, key: &str| {
        println!("{what:10} {}", cache.join(key).display());
    };
    runtime()?.block_on(async {
        collateral
            .vcek(&request)
            .await
            .context("the report's VCEK")?;
        show("vcek", &request.cache_key());
        collateral
            .cert_chain(product)
            .await
            .with_context(|| format!("the {product} ASK and ARK"))?;
        show("cert_chain", &kds::cert_chain_cache_key(product));
        let crl = collateral
            .crl(product, now)
            .await
            .with_context(|| format!("the {product} CRL"))?;
        show("crl", &kds::crl_cache_key(product));
        if let Some(next) = crl.next_update() {
            let next = time::OffsetDateTime::from(next)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            println!("(the CRL is current until {next}; fetch again before then)");
        }
        Ok(())
    })
}
