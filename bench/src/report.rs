//! One scenario's figures over several runs: medians, spread and ratios, printed as a table or as
//! the JSON object `{"scenario", "runs", "figures": {name: median}, "spread": {name: [min, max]},
//! "ratios": {name: value}, "goals": {name: goal}, "notes": [..]}`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub struct Scenario {
    name: &'static str,
    runs: usize,
    samples: BTreeMap<String, Vec<f64>>,
    ratios: BTreeMap<String, f64>,
    goals: BTreeMap<String, String>,
    notes: Vec<String>,
}

impl Scenario {
    pub fn new(name: &'static str, runs: usize) -> Scenario {
        Scenario {
            name,
            runs,
            samples: BTreeMap::new(),
            ratios: BTreeMap::new(),
            goals: BTreeMap::new(),
            notes: vec![],
        }
    }

    /// One run's value of a figure.
    pub fn figure(&mut self, name: impl Into<String>, value: f64) {
        self.samples.entry(name.into()).or_default().push(value);
    }

    pub fn median(&self, name: &str) -> Option<f64> {
        let mut v = self.samples.get(name)?.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        (n > 0).then(|| if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
    }

    /// A ratio: the median of the per-run ratio `name`, measured within each run.
    pub fn ratio_from_median(&mut self, name: &str) {
        if let Some(m) = self.median(name) {
            self.ratios.insert(name.to_owned(), m);
        }
    }

    /// A ratio of two medians (`num ÷ den`) under `name`; the per-run ratio stays a figure.
    pub fn ratio_of_medians(&mut self, name: &str, num: &str, den: &str) {
        if let (Some(n), Some(d)) = (self.median(num), self.median(den))
            && d != 0.0
        {
            self.ratios.insert(name.to_owned(), n / d);
        }
    }

    pub fn goal(&mut self, name: &str, goal: &str) {
        self.goals.insert(name.to_owned(), goal.to_owned());
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn to_json(&self) -> Value {
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        let figures: BTreeMap<&str, f64> =
            self.samples.keys().filter_map(|k| self.median(k).map(|m| (k.as_str(), round(m)))).collect();
        let spread: BTreeMap<&str, [f64; 2]> = self
            .samples
            .iter()
            .map(|(k, v)| {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (k.as_str(), [round(min), round(max)])
            })
            .collect();
        let ratios: BTreeMap<&str, f64> = self.ratios.iter().map(|(k, v)| (k.as_str(), round(*v))).collect();
        json!({
            "scenario": self.name,
            "runs": self.runs,
            "figures": figures,
            "spread": spread,
            "ratios": ratios,
            "goals": self.goals,
            "notes": self.notes,
        })
    }

    pub fn print(&self) {
        println!("scenario {} ({} runs)", self.name, self.runs);
        let j = self.to_json();
        for (k, v) in j["figures"].as_object().into_iter().flatten() {
            let s = &j["spread"][k];
            let goal = self.goals.get(k.as_str()).map(|g| format!("   goal {g}")).unwrap_or_default();
            println!("  {k:<32} {:>12}   [{} .. {}]{goal}", v, s[0], s[1]);
        }
        for (k, v) in j["ratios"].as_object().into_iter().flatten() {
            let goal = self.goals.get(k.as_str()).map(|g| format!("   goal {g}")).unwrap_or_default();
            println!("  ratio {k:<26} {v:>12}{goal}");
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}
