//! Route lookup: host + method + path to a route, as done once per request.
//!
//! Compares tables of 10, 1,000 and 10,000 routes, a third each of static
//! (`GET /api/r{i}/list`), parameter (`GET /api/r{i}/items/{id}`) and greedy
//! (`ANY /api/r{i}/files/{proxy+}`) routes, built from config text exactly as
//! the gateway builds them, and looks up a hit of each kind and a miss. A
//! radix-tree lookup should grow with the path's length, not the table's size.

use coregate::http::method::Method;
use coregate::route::Lookup;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::fmt::Write;

/// A config with `n` mock routes: route i is static, parameter or greedy by
/// `i % 3`.
fn config(n: usize) -> String {
    let mut s = String::from(
        "[server]\nshards = 1\ncpus = [0]\n\n[[apis]]\nname = \"bench\"\nhosts = [\"api.example.com\"]\n\n",
    );
    for i in 0..n {
        let key = match i % 3 {
            0 => format!("GET /api/r{i}/list"),
            1 => format!("GET /api/r{i}/items/{{id}}"),
            _ => format!("ANY /api/r{i}/files/{{proxy+}}"),
        };
        writeln!(
            s,
            "[[apis.routes]]\nkey = \"{key}\"\nintegration = {{ type = \"mock\", status = 200, body = \"{i}\" }}\n"
        )
        .unwrap();
    }
    s
}

fn last_of(n: usize, kind: usize) -> usize {
    (0..n).rev().find(|i| i % 3 == kind).unwrap()
}

fn lookup(c: &mut Criterion) {
    let host: Option<&[u8]> = Some(b"api.example.com");
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let plan = coregate::plan::load_str(&config(n)).expect("bench config compiles");
        assert_eq!(plan.routes.len(), n);
        let cases = [
            (
                "static",
                Method::Get,
                format!("/api/r{}/list", last_of(n, 0)),
            ),
            (
                "param",
                Method::Get,
                format!("/api/r{}/items/12345", last_of(n, 1)),
            ),
            (
                "greedy",
                Method::Post,
                format!("/api/r{}/files/a/b/c/report.pdf", last_of(n, 2)),
            ),
            ("miss", Method::Get, format!("/api/r{}/nothing", n + 1)),
        ];
        for (kind, method, path) in &cases {
            let found = matches!(plan.table.lookup(host, *method, path), Lookup::Found { .. });
            assert_eq!(found, *kind != "miss", "{kind} {path}");
            g.bench_with_input(BenchmarkId::new(*kind, n), path, |b, path| {
                b.iter(
                    || match plan.table.lookup(black_box(host), *method, black_box(path)) {
                        Lookup::Found { route, params } => black_box(route as usize + params.len()),
                        _ => black_box(0),
                    },
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
