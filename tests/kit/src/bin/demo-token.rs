//! Mints tokens for the demo's throwaway keys (`tests/keys`), so you can curl
//! a running demo (`make demo-up`):
//!
//! ```sh
//! curl -H "authorization: Bearer $(target/release/demo-token acme)" localhost:10000/
//! ```
//!
//! `--jwks` prints the public JWKS that `envoy/envoy.yaml` embeds.

use cell_router_kit::fixtures::{AUDIENCE, ISSUER, TENANT_CLAIM};
use cell_router_kit::tokens::{Alg, Jwks, TokenBuilder};
use clap::Parser;
use std::time::{SystemTime, UNIX_EPOCH};

/// The algorithms `envoy/envoy.yaml` accepts.
pub const DEMO_ALGS: [Alg; 4] = [Alg::RS256, Alg::ES256, Alg::EdDSA, Alg::HS256];

#[derive(Parser)]
#[command(about = "Mint demo tokens (throwaway test keys) or print the demo JWKS")]
struct Args {
    /// Tenant id to put in the `tenant_id` claim.
    #[arg(required_unless_present = "jwks")]
    tenant: Option<String>,
    /// Signing algorithm: RS256, ES256, EdDSA or HS256.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
    /// Print the demo JWKS instead of a token.
    #[arg(long)]
    jwks: bool,
}

fn main() {
    let args = Args::parse();
    if args.jwks {
        let jwks = DEMO_ALGS.iter().fold(Jwks::new(), |j, a| j.with(*a));
        println!("{}", jwks.to_json());
        return;
    }
    let Some(alg) = DEMO_ALGS
        .iter()
        .copied()
        .find(|a| a.name().eq_ignore_ascii_case(&args.alg))
    else {
        eprintln!("demo-token: --alg must be one of RS256, ES256, EdDSA, HS256");
        std::process::exit(2);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = TokenBuilder::new(alg, now)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .expires_at(now + args.ttl_s)
        .claim(TENANT_CLAIM, args.tenant.unwrap_or_default())
        .sign();
    println!("{token}");
}
