//! Deterministic generator of synthetic Typeform-like forms.
//!
//! Form `i` of a run with seed `S` is drawn from its own SplitMix64 stream seeded from `(S, i)`,
//! so every form is the same whatever order (or thread) asks for it, and the same `(N, S)` gives
//! byte-identical answers on every run and every machine. SplitMix64 is written out here (rather
//! than taken from `rand`) so that a dependency upgrade can never change the generated data.
//!
//! Only the attributes of the column catalogue in `docs/internals.md` are emitted.

use serde_json::{Map, Value, json};

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fully specified by its constants.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant for test data).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    pub(crate) fn token(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

/// Probability that an optional attribute is present.
const OPTIONAL_PRESENT: f64 = 0.8;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const HEX: &[u8] = b"0123456789abcdef";

const FORM_TYPES: &[&str] = &["quiz", "form", "score"];
const FORM_TITLES: &[&str] = &[
    "my test form",
    "Kundenzufriedenheit – Frühjahr",
    "Encuesta de satisfacción 2024",
    "Опрос для клиентов",
    "顧客満足度アンケート",
    "Enquête « qualité » du service",
    "Ankieta: zażółć gęślą jaźń",
    "Inscrição no evento ✨",
    "用户反馈调查",
    "Έρευνα ικανοποίησης",
    "설문 조사",
    "Customer feedback 🚀",
];
const LANGUAGES: &[&str] = &[
    "en", "de", "es", "fr", "ja", "ru", "pt", "pl", "zh", "el", "ko",
];
const PROGRESS_BARS: &[&str] = &["proportion", "percentage"];
const DESCRIPTIONS: &[&str] = &[
    "Tell us what you think",
    "Dites-nous ce que vous en pensez",
    "Sagen Sie uns Ihre Meinung – ehrlich!",
    "ご意見をお聞かせください",
    "Расскажите, что вы думаете",
    "Contanos qué pensás 🙂",
];
const COUNTRY_CODES: &[&str] = &["us", "de", "fr", "jp", "br", "pl", "gr", "kr"];
const SHAPES: &[&str] = &[
    "star", "heart", "user", "up", "crown", "cat", "dog", "circle",
];
const ATTACHMENT_TYPES: &[&str] = &["image", "video"];
const BUTTON_TEXTS: &[&str] = &["Continue", "Weiter", "Continuer", "次へ", "Далее"];
const LABELS: &[&str] = &[
    "Not likely",
    "Neutral",
    "Very likely",
    "Pas du tout",
    "Sehr gern",
    "とても",
];
const CHOICE_LABELS: &[&str] = &[
    "Red",
    "Grün",
    "Bleu",
    "Amarillo",
    "紫",
    "Чёрный",
    "White",
    "Ørange",
    "Gris",
];

/// Field kinds and the titles each may carry.
const KINDS: &[(&str, &[&str])] = &[
    (
        "open_text",
        &[
            "What is your name?",
            "Wie heißt du?",
            "¿Cómo te llamas?",
            "お名前は？",
        ],
    ),
    (
        "phone_number",
        &[
            "What is your phone number?",
            "Numéro de téléphone ?",
            "Ваш номер телефона?",
        ],
    ),
    (
        "multiple_choice",
        &[
            "Pick a colour",
            "Wähle eine Farbe",
            "Choisissez une couleur",
            "好きな色は？",
        ],
    ),
    (
        "rating",
        &[
            "Rate us",
            "Bewerten Sie uns",
            "¿Qué tal lo hicimos?",
            "評価してください",
        ],
    ),
    (
        "opinion_scale",
        &[
            "Would you recommend us?",
            "Empfehlen Sie uns weiter?",
            "Nous recommanderiez-vous ?",
        ],
    ),
    (
        "number",
        &[
            "How old are you?",
            "Wie alt bist du?",
            "Quel âge avez-vous ?",
            "Сколько вам лет?",
        ],
    ),
    (
        "statement",
        &[
            "Thank you!",
            "Danke schön!",
            "Merci beaucoup !",
            "ありがとう！",
        ],
    ),
    (
        "yes_no",
        &[
            "Do you agree?",
            "Stimmst du zu?",
            "¿Estás de acuerdo?",
            "同意しますか？",
        ],
    ),
];

/// The id of generated form `index`: `form-000000`, `form-000001`, …
pub(crate) fn form_id(index: u64) -> String {
    format!("form-{index:06}")
}

/// The index of a generated form id, if `id` is one (exactly as [`form_id`] prints it).
pub(crate) fn parse_form_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("form-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = digits.parse().ok()?;
    (form_id(index) == id).then_some(index)
}

/// Serialized JSON answer for generated form `index` of a run with `seed`.
pub(crate) fn generate_form_json(seed: u64, index: u64) -> Vec<u8> {
    let mut stream_seed = SplitMix64::new(index);
    let mut rng = SplitMix64::new(seed ^ stream_seed.next_u64());
    let form = generate_form(&mut rng, index);
    serde_json::to_vec(&form).expect("serializing a JSON value cannot fail")
}

fn generate_form(rng: &mut SplitMix64, index: u64) -> Value {
    let mut form = Map::new();
    form.insert("id".into(), form_id(index).into());
    if rng.chance(0.9) {
        form.insert("type".into(), rng.pick(FORM_TYPES).into());
    }
    form.insert("title".into(), rng.pick(FORM_TITLES).into());
    if rng.chance(0.95) {
        let mut settings = Map::new();
        optional(rng, &mut settings, "language", |r| r.pick(LANGUAGES).into());
        optional(rng, &mut settings, "progress_bar", |r| {
            r.pick(PROGRESS_BARS).into()
        });
        optional(rng, &mut settings, "show_time_to_complete", |r| {
            r.chance(0.5).into()
        });
        optional(rng, &mut settings, "show_number_of_submissions", |r| {
            r.chance(0.5).into()
        });
        optional(rng, &mut settings, "redirect_after_submit_url", |r| {
            format!("https://example.com/thanks/{}", r.token(ALNUM, 8)).into()
        });
        if rng.chance(0.6) {
            let mut meta = Map::new();
            optional(rng, &mut meta, "allow_indexing", |r| r.chance(0.5).into());
            optional(rng, &mut meta, "description", |r| {
                r.pick(DESCRIPTIONS).into()
            });
            insert_nonempty(&mut settings, "meta", meta);
        }
        insert_nonempty(&mut form, "settings", settings);
    }
    // 1..=9 fields, 5 on average.
    let n_fields = rng.range(1, 9);
    let fields: Vec<Value> = (0..n_fields).map(|_| generate_field(rng)).collect();
    form.insert("fields".into(), Value::Array(fields));
    Value::Object(form)
}

fn generate_field(rng: &mut SplitMix64) -> Value {
    let (kind, titles) = KINDS[rng.below(KINDS.len() as u64) as usize];
    let mut field = Map::new();
    field.insert("id".into(), rng.token(ALNUM, 12).into());
    field.insert("title".into(), rng.pick(titles).into());
    let reference = if rng.chance(0.5) {
        rng.token(CROCKFORD, 26)
    } else {
        format!(
            "{}-{}-{}-{}-{}",
            rng.token(HEX, 8),
            rng.token(HEX, 4),
            rng.token(HEX, 4),
            rng.token(HEX, 4),
            rng.token(HEX, 12)
        )
    };
    field.insert("reference".into(), reference.into());

    let mut properties = Map::new();
    let mut validations = Map::new();
    let mut attachment = false;
    match kind {
        "open_text" => {
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
            optional(rng, &mut validations, "max_length", |r| {
                r.range(10, 5000).into()
            });
            attachment = rng.chance(0.3);
        }
        "phone_number" => {
            optional(rng, &mut properties, "default_country_code", |r| {
                r.pick(COUNTRY_CODES).into()
            });
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
        }
        "multiple_choice" => {
            optional(rng, &mut properties, "choices", |r| {
                let n = r.range(2, 6);
                (0..n)
                    .map(|_| {
                        json!({
                            "id": r.token(ALNUM, 12),
                            "label": r.pick(CHOICE_LABELS),
                            "ref": r.token(HEX, 8),
                        })
                    })
                    .collect::<Vec<_>>()
                    .into()
            });
            optional(rng, &mut properties, "allow_multiple_selection", |r| {
                r.chance(0.5).into()
            });
            optional(rng, &mut properties, "randomize", |r| r.chance(0.5).into());
            optional(rng, &mut properties, "allow_other_choice", |r| {
                r.chance(0.5).into()
            });
            optional(rng, &mut properties, "description", |r| {
                r.pick(DESCRIPTIONS).into()
            });
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
        }
        "rating" => {
            optional(rng, &mut properties, "steps", |r| r.range(3, 10).into());
            optional(rng, &mut properties, "shape", |r| r.pick(SHAPES).into());
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
        }
        "opinion_scale" => {
            optional(rng, &mut properties, "steps", |r| r.range(5, 11).into());
            optional(rng, &mut properties, "start_at_one", |r| {
                r.chance(0.5).into()
            });
            if rng.chance(OPTIONAL_PRESENT) {
                let mut labels = Map::new();
                optional(rng, &mut labels, "left", |r| r.pick(LABELS).into());
                optional(rng, &mut labels, "center", |r| r.pick(LABELS).into());
                optional(rng, &mut labels, "right", |r| r.pick(LABELS).into());
                insert_nonempty(&mut properties, "labels", labels);
            }
        }
        "number" => {
            let min = rng.range(0, 100);
            optional(rng, &mut validations, "min_value", |_| min.into());
            optional(rng, &mut validations, "max_value", |r| {
                (min + r.range(1, 10_000)).into()
            });
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
        }
        "statement" => {
            optional(rng, &mut properties, "button_text", |r| {
                r.pick(BUTTON_TEXTS).into()
            });
            optional(rng, &mut properties, "hide_marks", |r| r.chance(0.5).into());
            attachment = rng.chance(0.3);
        }
        "yes_no" => {
            optional(rng, &mut properties, "description", |r| {
                r.pick(DESCRIPTIONS).into()
            });
            optional(rng, &mut validations, "required", |r| r.chance(0.5).into());
        }
        other => unreachable!("unknown field kind {other}"),
    }
    insert_nonempty(&mut field, "properties", properties);
    insert_nonempty(&mut field, "validations", validations);
    field.insert("type".into(), kind.into());
    if attachment {
        let mut a = Map::new();
        a.insert("type".into(), rng.pick(ATTACHMENT_TYPES).into());
        a.insert(
            "href".into(),
            format!("https://images.example.com/images/{}", rng.token(ALNUM, 12)).into(),
        );
        field.insert("attachment".into(), Value::Object(a));
    }
    Value::Object(field)
}

/// Inserts `key` with probability [`OPTIONAL_PRESENT`]. The value is drawn only when present.
fn optional(
    rng: &mut SplitMix64,
    map: &mut Map<String, Value>,
    key: &str,
    value: impl FnOnce(&mut SplitMix64) -> Value,
) {
    if rng.chance(OPTIONAL_PRESENT) {
        let v = value(rng);
        map.insert(key.into(), v);
    }
}

/// Inserts a nested object unless every optional part of it came out absent.
fn insert_nonempty(map: &mut Map<String, Value>, key: &str, inner: Map<String, Value>) {
    if !inner.is_empty() {
        map.insert(key.into(), Value::Object(inner));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567, from the reference implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs() {
        for i in [0, 1, 999] {
            assert_eq!(generate_form_json(42, i), generate_form_json(42, i));
        }
        assert_ne!(generate_form_json(42, 7), generate_form_json(43, 7));
    }

    /// FNV-1a (64-bit) of the answers of forms `0..n`, each followed by a newline.
    fn fnv1a_of_forms(seed: u64, n: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..n {
            for &b in generate_form_json(seed, i).iter().chain(b"\n") {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    #[test]
    fn catalogue_forms_are_pinned() {
        // Pinned from the generator as it was before the Typeform mode was added (commit
        // bf62296): the benchmark compares runs over these bytes, so they must never change.
        // (1,000 forms, seed 42, is the cluster's default; seed 7 is the shape test's.)
        let pins = (
            fnv1a_of_forms(42, 1000),
            fnv1a_of_forms(7, 100),
            fnv1a_of_forms(1, 10),
        );
        assert_eq!(pins, PINS, "{pins:?}");
        assert!(generate_form_json(42, 0).starts_with(br#"{"id":"form-000000","#));
    }

    const PINS: (u64, u64, u64) = (
        9_589_515_675_600_873_947,
        5_193_769_812_706_755_985,
        5_861_479_974_652_232_442,
    );

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_form_id(&form_id(0)), Some(0));
        assert_eq!(parse_form_id("form-000999"), Some(999));
        assert_eq!(parse_form_id("form-1234567"), Some(1_234_567));
        assert_eq!(parse_form_id("form-0000001"), None);
        assert_eq!(parse_form_id("form-12"), None);
        assert_eq!(parse_form_id("abcde"), None);
    }

    #[test]
    fn shape_matches_the_catalogue() {
        let (mut fields, mut forms, mut non_ascii) = (0usize, 0usize, 0usize);
        let (mut with_settings, mut with_meta) = (0, 0);
        for i in 0..2000 {
            let v: Value = serde_json::from_slice(&generate_form_json(7, i)).unwrap();
            let o = v.as_object().unwrap();
            forms += 1;
            for k in o.keys() {
                assert!(
                    ["id", "type", "title", "settings", "fields"].contains(&k.as_str()),
                    "{k}"
                );
            }
            if !o["title"].as_str().unwrap().is_ascii() {
                non_ascii += 1;
            }
            if let Some(s) = o.get("settings") {
                with_settings += 1;
                with_meta += usize::from(s.get("meta").is_some());
            }
            let fs = o["fields"].as_array().unwrap();
            assert!((1..=9).contains(&fs.len()));
            fields += fs.len();
            for f in fs {
                for k in ["id", "title", "reference", "type"] {
                    assert!(f.get(k).is_some(), "field without {k}: {f}");
                }
            }
        }
        let avg = fields as f64 / forms as f64;
        assert!((4.5..5.5).contains(&avg), "average fields {avg}");
        assert!(
            non_ascii > forms / 2,
            "non-ASCII titles {non_ascii}/{forms}"
        );
        assert!(with_settings < forms && with_meta < with_settings && with_meta > 0);
    }
}
