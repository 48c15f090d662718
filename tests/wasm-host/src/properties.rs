//! `proxy_get_property`: the attributes Envoy exposes, serialized the way
//! Envoy does (strings as bytes, integers as 8-byte little-endian, booleans
//! as one byte, maps as header pairs).

use super::pairs;
use super::state::{HostState, Stream};
use std::time::UNIX_EPOCH;

/// Peer addresses a stream reports.
pub const SOURCE_ADDRESS: &str = "10.0.0.7:40212";
pub const DESTINATION_ADDRESS: &str = "10.0.0.1:8080";

/// Looks a property up: values the plugin or the test set first, then the
/// ones Envoy derives from the stream and the plugin.
pub(crate) fn get(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let stream = state.streams.get(&state.active());
    if let Some(value) = stream.and_then(|s| s.properties.get(path)) {
        return Some(value.clone());
    }
    if let Some(value) = state.properties.get(path) {
        return Some(value.clone());
    }
    let parts: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    match parts.as_slice() {
        [b"plugin_name"] => Some(state.plugin_name.clone().into_bytes()),
        [b"plugin_root_id"] => Some(state.root_name.clone().into_bytes()),
        [b"plugin_vm_id"] => Some(state.vm_id.clone().into_bytes()),
        [b"request", rest @ ..] => request(stream?, rest),
        [b"response", b"code"] => {
            let status = stream?
                .response_headers
                .get(":status")?
                .parse::<i64>()
                .ok()?;
            Some(status.to_le_bytes().to_vec())
        }
        [b"source", b"address"] => stream.map(|_| SOURCE_ADDRESS.as_bytes().to_vec()),
        [b"source", b"port"] => stream.map(|_| port(SOURCE_ADDRESS)),
        [b"destination", b"address"] => stream.map(|_| DESTINATION_ADDRESS.as_bytes().to_vec()),
        [b"destination", b"port"] => stream.map(|_| port(DESTINATION_ADDRESS)),
        [b"connection", b"mtls"] => stream.map(|_| vec![0]),
        _ => None,
    }
}

fn port(address: &str) -> Vec<u8> {
    let port: i64 = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    port.to_le_bytes().to_vec()
}

fn request(stream: &Stream, rest: &[&[u8]]) -> Option<Vec<u8>> {
    // Envoy reads request attributes from the stream's own header map, which
    // it keeps for the whole stream (not only during the headers callback).
    let headers = &stream.request_headers;
    let header = |name: &str| headers.get_bytes(name).map(<[u8]>::to_vec);
    match rest {
        [b"path"] => header(":path"),
        [b"url_path"] => {
            let path = headers.get_bytes(":path")?;
            let end = path.iter().position(|b| *b == b'?').unwrap_or(path.len());
            Some(path.get(..end)?.to_vec())
        }
        [b"query"] => {
            let path = headers.get_bytes(":path")?;
            let start = path
                .iter()
                .position(|b| *b == b'?')
                .map_or(path.len(), |i| i + 1);
            Some(path.get(start..)?.to_vec())
        }
        [b"host"] => header(":authority"),
        [b"scheme"] => header(":scheme"),
        [b"method"] => header(":method"),
        [b"id"] => header("x-request-id"),
        [b"useragent"] => header("user-agent"),
        [b"referer"] => header("referer"),
        [b"protocol"] => Some(b"HTTP/1.1".to_vec()),
        [b"time"] => {
            let nanos = stream
                .started_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            Some(nanos.to_le_bytes().to_vec())
        }
        [b"headers"] => Some(pairs::encode(headers.entries())),
        [b"headers", name] => headers.get_bytes(name).map(<[u8]>::to_vec),
        _ => None,
    }
}
