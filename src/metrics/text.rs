//! Writing Prometheus' text exposition format, version 0.0.4: each family's `# HELP` and
//! `# TYPE` lines, then its samples, all in one group; label values and help text escaped as
//! the format says.

use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when its owner restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_bucket{le=...}` (cumulative), `_sum` and `_count` samples.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels of one sample: (name, value) pairs; names are fixed identifiers, values anything.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A document being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts family `name`; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
    }

    /// One sample of a counter or gauge family (or a histogram's part, by its full name).
    pub fn sample(&mut self, name: &str, labels: Labels, value: impl Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    /// One histogram of family `name`: `counts` per bucket (not cumulative) with each
    /// bucket's upper bound (`None` for +Inf, which must be last), the sum of the observed
    /// values, in the family's unit.
    pub fn histogram(&mut self, name: &str, labels: Labels, counts: &[(Option<f64>, u64)], sum: f64) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for &(bound, count) in counts {
            cumulative += count;
            let le = bound.map_or_else(|| "+Inf".to_string(), format_float);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value: integers exactly, floats in Go's spelling of specials.
pub trait Value {
    /// Appends the value's text.
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        out.push_str(&format_float(*self));
    }
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_are_written_as_the_format_says() {
        let mut e = Exposition::default();
        e.family("ferry_x_total", Kind::Counter, "Things.\nMore \\ things.");
        e.sample("ferry_x_total", &[("name", "a\"b\\c\nd")], 7u64);
        e.sample("ferry_x_total", &[], f64::INFINITY);
        e.family("ferry_d_seconds", Kind::Histogram, "Durations.");
        e.histogram("ferry_d_seconds", &[("k", "v")], &[(Some(0.5), 2), (Some(1.0), 0), (None, 1)], 2.25);
        assert_eq!(
            e.finish(),
            "# HELP ferry_x_total Things.\\nMore \\\\ things.\n# TYPE ferry_x_total counter\n\
             ferry_x_total{name=\"a\\\"b\\\\c\\nd\"} 7\nferry_x_total +Inf\n\
             # HELP ferry_d_seconds Durations.\n# TYPE ferry_d_seconds histogram\n\
             ferry_d_seconds_bucket{k=\"v\",le=\"0.5\"} 2\nferry_d_seconds_bucket{k=\"v\",le=\"1\"} 2\n\
             ferry_d_seconds_bucket{k=\"v\",le=\"+Inf\"} 3\nferry_d_seconds_sum{k=\"v\"} 2.25\n\
             ferry_d_seconds_count{k=\"v\"} 3\n"
        );
    }
}
