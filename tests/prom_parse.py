"""Parses a Prometheus exposition with a parser we did not write.

Reads the exposition on stdin and parses it with Python's prometheus_client
(`text` mode: prometheus_client.parser, the Prometheus text format 0.0.4;
`openmetrics` mode: prometheus_client.openmetrics.parser, which is strict:
it rejects a missing `# EOF`, a counter sample without `_total`, a
histogram without `+Inf`, unsorted buckets). Prints one JSON object:
{"families": {name: type}, "samples": [[name, {labels}, value], ...]}.
Exits non-zero, with the reason on stderr, when the module is missing or
the text does not parse: the Rust tests (tests/metrics.rs) fail on that.
"""
import json
import sys


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "text"
    try:
        if mode == "openmetrics":
            from prometheus_client.openmetrics.parser import text_string_to_metric_families
        else:
            from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        print(
            f"prometheus_client is not installed ({e}); scripts/test installs it "
            "(pip install prometheus_client)",
            file=sys.stderr,
        )
        return 3
    text = sys.stdin.read()
    families = {}
    samples = []
    for fam in text_string_to_metric_families(text):
        if fam.name in families:
            raise SystemExit(f"family {fam.name} appears twice")
        families[fam.name] = fam.type
        for s in fam.samples:
            samples.append([s.name, dict(s.labels), s.value])
    json.dump({"families": families, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
