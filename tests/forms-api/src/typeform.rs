//! Deterministic generator of Typeform-shaped forms (`--typeform N`: ids `tf-000000` …).
//!
//! The shape follows the public Typeform Create API's "retrieve form" answer
//! (`GET https://api.typeform.com/forms/{form_id}`): form-level `type`, `title`, `workspace`
//! and `theme` (`href`), `settings` (with `meta`, `meta.image.href`, `capabilities`,
//! `notifications`), `hidden` (array of strings), `variables` (`score`, `price`),
//! `welcome_screens`, `thankyou_screens`, `logic`, `fields`, `_links`, and the timestamps; fields
//! of [`KINDS`] (19 of Typeform's field types) with `ref`, `properties`, `validations`,
//! `attachment` (`scale`, `properties`) and `layout`; a `group`'s nested fields in
//! `properties.fields`. The data itself is made up here.
//!
//! Forms vary as real ones do: optional parts are absent at random. On purpose, and at the
//! rates documented in `crates/form-model/test-data/typeform/README.md` (pinned by the tests
//! below), a few values change JSON type from form to form for the same attribute, and some
//! forms carry attribute names outside Avro's `[A-Za-z_][A-Za-z0-9_]*` (custom variables).
//!
//! Like the catalogue generator (`generator.rs`), form `i` of seed `S` comes from its own
//! SplitMix64 stream, so the same `(N, S)` always gives byte-identical answers.

use serde_json::{Map, Value};

use crate::generator::SplitMix64;

/// Typeform field types generated (19 of Typeform's; not `matrix`, `payment`,
/// `contact_info`, `calendly`).
pub(crate) const KINDS: [&str; 19] = [
    "short_text",
    "long_text",
    "multiple_choice",
    "picture_choice",
    "dropdown",
    "yes_no",
    "email",
    "phone_number",
    "number",
    "rating",
    "opinion_scale",
    "nps",
    "date",
    "file_upload",
    "website",
    "legal",
    "ranking",
    "group",
    "statement",
];

/// Share of fields with `validations.max_length` where it is a string (`"140"`).
pub(crate) const MAX_LENGTH_AS_STRING: f64 = 0.03;
/// Share of fields with `properties.steps` where it is a float (`5.0`).
pub(crate) const STEPS_AS_FLOAT: f64 = 0.03;
/// Share of fields with `validations.max_value` where it is a float with a fraction (`99.5`).
pub(crate) const MAX_VALUE_AS_FLOAT: f64 = 0.02;
/// Share of fields with `validations.required` where it is a string (`"true"`).
pub(crate) const REQUIRED_AS_STRING: f64 = 0.01;
/// Share of forms with custom variables whose names are outside Avro's names.
pub(crate) const ODD_VARIABLES: f64 = 0.08;
/// Share of forms with a top-level attribute whose name starts with a digit ([`DIGIT_KEY`]).
pub(crate) const DIGIT_TOP_LEVEL: f64 = 0.03;
/// Not Typeform's: an attribute our own forms API could add to its answers. Nested, a name
/// starting with a digit is no problem (`variables_2nd_attempt`); only a top-level one makes a
/// column name that starts with a digit (and only in `form`: `form_2fa_required` is fine).
pub(crate) const DIGIT_KEY: &str = "2fa_required";

/// Custom variable names (each outside `[A-Za-z_][A-Za-z0-9_]*`, or differing from `score`
/// only in case) and whether the value is a price-like float.
const ODD_VARIABLE_NAMES: [(&str, bool); 5] = [
    ("lead-score", false),
    ("total score", false),
    ("2nd_attempt", false),
    ("Score", false),
    ("précision", true),
];

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

const FORM_TYPES: &[&str] = &["form", "quiz", "score", "branching", "classification"];
const FORM_TITLES: &[&str] = &[
    "Customer satisfaction survey",
    "Kundenzufriedenheit – Frühjahr",
    "Encuesta de satisfacción 2024",
    "Опрос для клиентов",
    "顧客満足度アンケート",
    "Enquête « qualité » du service",
    "Job application: Backend engineer",
    "Inscrição no evento ✨",
    "用户反馈调查",
    "Event RSVP 🎉",
    "Lead qualification (B2B)",
    "Trivia quiz: how well do you know us?",
];
const LANGUAGES: &[&str] = &["en", "de", "es", "fr", "ja", "ru", "pt", "zh", "it", "nl"];
const PROGRESS_BARS: &[&str] = &["proportion", "percentage"];
const DESCRIPTIONS: &[&str] = &[
    "Tell us what you think",
    "Dites-nous ce que vous en pensez",
    "Sagen Sie uns Ihre Meinung – ehrlich!",
    "ご意見をお聞かせください",
    "Расскажите, что вы думаете",
    "It only takes *2 minutes*",
    "Your answers are anonymous.\nThank you!",
];
const META_TITLES: &[&str] = &[
    "Share your feedback",
    "Quick survey",
    "Apply now",
    "Umfrage",
];
const ALT_TEXTS: &[&str] = &[
    "A smiling customer",
    "Our office in Barcelona",
    "Logo",
    "Produktfoto",
    "グラフ",
];
const COUNTRY_CODES: &[&str] = &["US", "DE", "FR", "JP", "BR", "ES", "GB", "IN"];
const SHAPES: &[&str] = &[
    "star",
    "heart",
    "user",
    "up",
    "crown",
    "cat",
    "dog",
    "circle",
    "flag",
    "droplet",
    "tick",
    "lightbulb",
    "trophy",
    "cloud",
    "thunderbolt",
    "pencil",
    "skull",
];
const DATE_STRUCTURES: &[&str] = &["MMDDYYYY", "DDMMYYYY", "YYYYMMDD"];
const DATE_SEPARATORS: &[&str] = &["/", "-", "."];
const BUTTON_TEXTS: &[&str] = &["Continue", "Weiter", "Continuer", "次へ", "Далее", "Start"];
const LABEL_LEFT: &[&str] = &["Not likely", "Pas du tout", "Gar nicht", "全く"];
const LABEL_CENTER: &[&str] = &["Neutral", "Bof", "Neutral"];
const LABEL_RIGHT: &[&str] = &["Extremely likely", "Tout à fait", "Sehr gern", "とても"];
const COUNTRIES: &[&str] = &[
    "Deutschland",
    "España",
    "France",
    "日本",
    "Brasil",
    "United Kingdom",
    "India",
    "Україна",
    "Ελλάδα",
];
const FEATURES: &[&str] = &[
    "Price",
    "Quality",
    "Speed",
    "Support",
    "Design",
    "Reliability",
];
const CHOICE_LABELS: &[&str] = &[
    "Red",
    "Grün",
    "Bleu",
    "Amarillo",
    "紫",
    "Чёрный",
    "Other \"special\" option",
    "Ørange",
    "None of the above",
];
const LAYOUT_TYPES: &[&str] = &["split", "wallpaper", "float", "stack"];
const PLACEMENTS: &[&str] = &["left", "right"];
const VIDEO_SCALES: [f64; 4] = [0.4, 0.6, 0.8, 1.0];
const HIDDEN_NAMES: &[&str] = &[
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "email",
    "user_id",
    "plan",
];
const EMAILS: &[&str] = &[
    "team@example.com",
    "support@example.org",
    "jobs@example.net",
];
const ACCOUNTS: &[&str] = &["acme", "globex", "initech", "umbrella"];

/// Titles by field type.
fn titles(kind: &str) -> &'static [&'static str] {
    match kind {
        "short_text" => &["What is your name?", "Wie heißt du?", "お名前は？"],
        "long_text" => &["Anything else you'd like to tell us?", "Commentaires ?"],
        "multiple_choice" => &["Pick a colour", "Wähle eine Farbe", "好きな色は？"],
        "picture_choice" => &["Which design do you prefer?", "¿Qué diseño prefieres?"],
        "dropdown" => &[
            "Which country do you live in?",
            "Dans quel pays vivez-vous ?",
        ],
        "yes_no" => &["Do you agree?", "Stimmst du zu?", "同意しますか？"],
        "email" => &["What's your email address?", "Ihre E-Mail-Adresse?"],
        "phone_number" => &["What is your phone number?", "Ваш номер телефона?"],
        "number" => &["How old are you?", "Quel âge avez-vous ?"],
        "rating" => &["How would you rate us?", "Bewerten Sie uns"],
        "opinion_scale" => &["How satisfied are you?", "¿Qué tan satisfecho estás?"],
        "nps" => &[
            "How likely are you to recommend us to a friend?",
            "Empfehlen Sie uns weiter?",
        ],
        "date" => &["When were you born?", "Date de début ?"],
        "file_upload" => &["Upload your CV", "Laden Sie ein Foto hoch"],
        "website" => &["Your website or portfolio", "Ihre Webseite"],
        "legal" => &["Do you accept our terms?", "¿Aceptas los términos?"],
        "ranking" => &["Rank these features", "Classez ces options"],
        "group" => &["About you", "Über Sie", "あなたについて"],
        "statement" => &["Thank you, {{field:name}}!", "Danke schön!", "ありがとう！"],
        other => unreachable!("unknown field type {other}"),
    }
}

/// The id of Typeform form `index`: `tf-000000`, `tf-000001`, …
pub(crate) fn form_id(index: u64) -> String {
    format!("tf-{index:06}")
}

/// The index of a Typeform form id, if `id` is one (exactly as [`form_id`] prints it).
pub(crate) fn parse_form_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("tf-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = digits.parse().ok()?;
    (form_id(index) == id).then_some(index)
}

/// Serialized JSON answer for Typeform form `index` of a run with `seed`.
pub(crate) fn generate_form_json(seed: u64, index: u64) -> Vec<u8> {
    // A stream of its own, apart from the catalogue forms' streams of the same seed.
    let mut stream_seed = SplitMix64::new(index ^ 0x7466_5f66_6f72_6d73);
    let mut rng = SplitMix64::new(seed ^ stream_seed.next_u64());
    let form = Gen { rng: &mut rng }.form(index);
    serde_json::to_vec(&form).expect("serializing a JSON value cannot fail")
}

type Obj = Map<String, Value>;

struct Gen<'r> {
    rng: &'r mut SplitMix64,
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.chance(p)
    }

    fn pick(&mut self, items: &[&'static str]) -> &'static str {
        self.rng.pick(items)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.range(lo, hi)
    }

    fn token(&mut self, alphabet: &[u8], len: usize) -> String {
        self.rng.token(alphabet, len)
    }

    /// `2024-03-05T10:12:01.123Z`-style text (Typeform's timestamps).
    fn timestamp(&mut self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.range(2019, 2025),
            self.range(1, 12),
            self.range(1, 28),
            self.range(0, 23),
            self.range(0, 59),
            self.range(0, 59),
            self.range(0, 999)
        )
    }

    /// A field's `ref`: Typeform's generated UUID-like refs, or a readable one a user typed.
    fn field_ref(&mut self, kind: &str) -> String {
        if self.chance(0.7) {
            format!(
                "{}-{}-{}-{}-{}",
                self.token(HEX, 8),
                self.token(HEX, 4),
                self.token(HEX, 4),
                self.token(HEX, 4),
                self.token(HEX, 12)
            )
        } else {
            format!("{kind}_{}", self.token(LOWER, 4))
        }
    }

    fn image_href(&mut self) -> String {
        format!(
            "https://images.typeform.com/images/{}",
            self.token(ALNUM, 12)
        )
    }

    fn form(&mut self, index: u64) -> Value {
        let id = form_id(index);
        let mut form = Obj::new();
        form.insert("id".into(), id.clone().into());
        if self.chance(0.95) {
            form.insert("type".into(), self.pick(FORM_TYPES).into());
        }
        form.insert("title".into(), self.pick(FORM_TITLES).into());
        if self.chance(0.9) {
            form.insert(
                "workspace".into(),
                href(format!(
                    "https://api.typeform.com/workspaces/{}",
                    self.token(ALNUM, 6)
                )),
            );
        }
        if self.chance(0.95) {
            form.insert(
                "theme".into(),
                href(format!(
                    "https://api.typeform.com/themes/{}",
                    self.token(ALNUM, 6)
                )),
            );
        }
        if self.chance(0.97) {
            let settings = self.settings();
            form.insert("settings".into(), Value::Object(settings));
        }

        // Fields first (the screens and logic refer to their refs), inserted in Typeform's order.
        let n_fields = self.range(1, 10);
        let mut refs = Vec::new();
        let fields: Vec<Value> = (0..n_fields)
            .map(|_| {
                let f = self.field(true);
                refs.push(f["ref"].as_str().unwrap_or_default().to_owned());
                f
            })
            .collect();

        let with_score = matches!(
            form.get("type").and_then(Value::as_str),
            Some("quiz" | "score")
        );
        if self.chance(0.6) || with_score {
            let v = self.variables(with_score);
            form.insert("variables".into(), Value::Object(v));
        }
        if self.chance(0.5) {
            let n = self.range(0, 4);
            let hidden: Vec<Value> = (0..n).map(|i| HIDDEN_NAMES[i as usize].into()).collect();
            form.insert("hidden".into(), Value::Array(hidden));
        }
        if self.chance(0.6) {
            let screen = self.welcome_screen();
            form.insert("welcome_screens".into(), Value::Array(vec![screen]));
        }
        if self.chance(0.9) {
            let n = self.range(1, 2);
            let screens: Vec<Value> = (0..n).map(|i| self.thankyou_screen(i == 0)).collect();
            form.insert("thankyou_screens".into(), Value::Array(screens));
        }
        if refs.len() >= 2 && self.chance(0.4) {
            let logic = self.logic(&refs, form.contains_key("variables"));
            form.insert("logic".into(), Value::Array(logic));
        }
        form.insert("fields".into(), Value::Array(fields));
        let created = self.timestamp();
        form.insert("created_at".into(), created.into());
        if self.chance(0.9) {
            let t = self.timestamp();
            form.insert("last_updated_at".into(), t.into());
        }
        if self.chance(0.7) {
            let t = self.timestamp();
            form.insert("published_at".into(), t.into());
        }
        let account = self.pick(ACCOUNTS);
        let mut links = Obj::new();
        links.insert(
            "display".into(),
            format!("https://{account}.typeform.com/to/{id}").into(),
        );
        if self.chance(0.8) {
            links.insert(
                "responses".into(),
                format!("https://api.typeform.com/forms/{id}/responses").into(),
            );
        }
        form.insert("_links".into(), Value::Object(links));
        if self.chance(DIGIT_TOP_LEVEL) {
            form.insert(DIGIT_KEY.into(), self.chance(0.5).into());
        }
        Value::Object(form)
    }

    fn settings(&mut self) -> Obj {
        let mut s = Obj::new();
        if self.chance(0.95) {
            s.insert("language".into(), self.pick(LANGUAGES).into());
        }
        for (key, p) in [
            ("is_public", 0.95),
            ("progress_bar", 0.9),
            ("show_progress_bar", 0.9),
            ("show_typeform_branding", 0.9),
            ("show_time_to_complete", 0.7),
            ("show_number_of_submissions", 0.7),
            ("show_cookie_consent", 0.6),
            ("show_question_number", 0.6),
            ("show_key_hint_on_choices", 0.6),
            ("hide_navigation", 0.6),
            ("autosave_progress", 0.5),
            ("free_form_navigation", 0.5),
            ("are_uploads_public", 0.4),
        ] {
            if self.chance(p) {
                let v: Value = if key == "progress_bar" {
                    self.pick(PROGRESS_BARS).into()
                } else {
                    self.chance(0.5).into()
                };
                s.insert(key.into(), v);
            }
        }
        if self.chance(0.3) {
            let url = format!("https://example.com/thanks?src={}", self.token(LOWER, 6));
            s.insert("redirect_after_submit_url".into(), url.into());
        }
        if self.chance(0.1) {
            let ga = format!("UA-{}-1", self.range(10_000_000, 99_999_999));
            s.insert("google_analytics".into(), ga.into());
        }
        if self.chance(0.8) {
            let mut meta = Obj::new();
            if self.chance(0.5) {
                meta.insert("title".into(), self.pick(META_TITLES).into());
            }
            meta.insert("allow_indexing".into(), self.chance(0.5).into());
            if self.chance(0.6) {
                meta.insert("description".into(), self.pick(DESCRIPTIONS).into());
            }
            if self.chance(0.5) {
                let h = self.image_href();
                meta.insert("image".into(), href(h));
            }
            s.insert("meta".into(), Value::Object(meta));
        }
        if self.chance(0.7) {
            let mut e2e = Obj::new();
            e2e.insert("enabled".into(), self.chance(0.1).into());
            e2e.insert("modifiable".into(), self.chance(0.5).into());
            let mut caps = Obj::new();
            caps.insert("e2e_encryption".into(), Value::Object(e2e));
            s.insert("capabilities".into(), Value::Object(caps));
        }
        if self.chance(0.4) {
            let mut notifications = Obj::new();
            let mut me = Obj::new();
            me.insert("enabled".into(), self.chance(0.8).into());
            let n = self.range(1, 3);
            let recipients: Vec<Value> = (0..n).map(|i| EMAILS[i as usize].into()).collect();
            me.insert("recipients".into(), Value::Array(recipients));
            if self.chance(0.5) {
                me.insert("reply_to".into(), "{{field:email}}".into());
            }
            me.insert("subject".into(), "New response: {{form:title}}".into());
            me.insert("message".into(), "{{form:all_answers}}".into());
            notifications.insert("self".into(), Value::Object(me));
            if self.chance(0.5) {
                let mut resp = Obj::new();
                resp.insert("enabled".into(), self.chance(0.6).into());
                resp.insert("recipient".into(), "{{field:email}}".into());
                resp.insert(
                    "reply_to".into(),
                    Value::Array(vec![self.pick(EMAILS).into()]),
                );
                resp.insert("subject".into(), "Thanks for your answers".into());
                resp.insert("message".into(), "Hi {{field:name}},\nthank you!".into());
                notifications.insert("respondent".into(), Value::Object(resp));
            }
            s.insert("notifications".into(), Value::Object(notifications));
        }
        s
    }

    /// `variables`: Typeform's `score` (integer) and `price` (number: written as an integer
    /// when whole, as Typeform does), plus, in [`ODD_VARIABLES`] of forms, custom variables
    /// with names outside Avro's.
    fn variables(&mut self, with_score: bool) -> Obj {
        let mut v = Obj::new();
        let odd = self.chance(ODD_VARIABLES);
        if with_score || odd || self.chance(0.6) {
            v.insert("score".into(), 0.into());
        }
        if self.chance(0.5) {
            let price = self.price();
            v.insert("price".into(), price);
        }
        if odd {
            let n = self.range(1, 3) as usize;
            let start = self.rng.below(ODD_VARIABLE_NAMES.len() as u64) as usize;
            for i in 0..n {
                let (name, float) = ODD_VARIABLE_NAMES[(start + i) % ODD_VARIABLE_NAMES.len()];
                let value = if float {
                    self.price()
                } else {
                    self.range(0, 10).into()
                };
                v.insert(name.into(), value);
            }
        }
        v
    }

    /// 0, a whole amount (an integer in JSON) or an amount with cents (a float).
    fn price(&mut self) -> Value {
        match self.rng.below(3) {
            0 => 0.into(),
            1 => self.range(1, 500).into(),
            _ => {
                // Correctly rounded: the double nearest to the decimal text, printed back as it.
                let cents = self.range(1, 99_999);
                if cents % 100 == 0 {
                    (cents as f64 / 100.0 + 0.5).into()
                } else {
                    (cents as f64 / 100.0).into()
                }
            }
        }
    }

    fn welcome_screen(&mut self) -> Value {
        let mut w = Obj::new();
        w.insert("id".into(), self.token(ALNUM, 8).into());
        w.insert("ref".into(), self.token(HEX, 16).into());
        w.insert("title".into(), "Welcome! Hi there 👋".into());
        let mut p = Obj::new();
        p.insert("show_button".into(), true.into());
        p.insert("button_text".into(), self.pick(BUTTON_TEXTS).into());
        if self.chance(0.6) {
            p.insert("description".into(), self.pick(DESCRIPTIONS).into());
        }
        w.insert("properties".into(), Value::Object(p));
        if self.chance(0.5) {
            let a = self.attachment(false);
            w.insert("attachment".into(), Value::Object(a));
        }
        if self.chance(0.3) {
            let l = self.layout();
            w.insert("layout".into(), Value::Object(l));
        }
        Value::Object(w)
    }

    fn thankyou_screen(&mut self, default: bool) -> Value {
        let mut t = Obj::new();
        let mut p = Obj::new();
        if default {
            t.insert("id".into(), "DefaultTyScreen".into());
            t.insert("ref".into(), "default_tys".into());
            t.insert("title".into(), "All done! Thanks for your time.".into());
            t.insert("type".into(), "thankyou_screen".into());
            p.insert("show_button".into(), false.into());
            p.insert("share_icons".into(), false.into());
            p.insert("button_mode".into(), "default_redirect".into());
            p.insert("button_text".into(), "Create a typeform".into());
        } else {
            t.insert("id".into(), self.token(ALNUM, 8).into());
            t.insert("ref".into(), self.token(HEX, 16).into());
            t.insert(
                "title".into(),
                "Nice, {{field:name}}: that's {{var:score}} points!".into(),
            );
            t.insert("type".into(), "thankyou_screen".into());
            p.insert("show_button".into(), true.into());
            p.insert("share_icons".into(), self.chance(0.5).into());
            if self.chance(0.5) {
                p.insert("button_mode".into(), "redirect".into());
                p.insert("redirect_url".into(), "https://example.com/next".into());
            } else {
                p.insert("button_mode".into(), "reload".into());
            }
            p.insert("button_text".into(), "Again".into());
        }
        t.insert("properties".into(), Value::Object(p));
        if !default && self.chance(0.5) {
            let a = self.attachment(false);
            t.insert("attachment".into(), Value::Object(a));
        }
        Value::Object(t)
    }

    fn logic(&mut self, refs: &[String], with_variables: bool) -> Vec<Value> {
        let n = self.range(1, 2);
        (0..n)
            .map(|_| {
                let from = self.rng.below(refs.len() as u64 - 1) as usize;
                let to = from + 1 + self.rng.below((refs.len() - from - 1) as u64) as usize;
                let mut actions = vec![serde_json::json!({
                    "action": "jump",
                    "details": {"to": {"type": "field", "value": refs[to]}},
                    "condition": {"op": "is", "vars": [
                        {"type": "field", "value": refs[from]},
                        {"type": "constant", "value": true},
                    ]},
                })];
                if with_variables && self.chance(0.5) {
                    let points = self.range(1, 10);
                    actions.push(serde_json::json!({
                        "action": "add",
                        "details": {
                            "target": {"type": "variable", "value": "score"},
                            "value": {"type": "constant", "value": points},
                        },
                        "condition": {"op": "always", "vars": []},
                    }));
                }
                serde_json::json!({"type": "field", "ref": refs[from], "actions": actions})
            })
            .collect()
    }

    /// An `attachment`: image (with alt text in `properties.description`, often) or video (with
    /// `scale`, one of Typeform's 0.4, 0.6, 0.8, 1: the last an integer in JSON).
    fn attachment(&mut self, image_only: bool) -> Obj {
        let mut a = Obj::new();
        if image_only || self.chance(0.7) {
            a.insert("type".into(), "image".into());
            let h = self.image_href();
            a.insert("href".into(), h.into());
            if self.chance(0.6) {
                let mut p = Obj::new();
                p.insert("description".into(), self.pick(ALT_TEXTS).into());
                a.insert("properties".into(), Value::Object(p));
            }
        } else {
            a.insert("type".into(), "video".into());
            let h = format!("https://www.youtube.com/watch?v={}", self.token(ALNUM, 11));
            a.insert("href".into(), h.into());
            if self.chance(0.8) {
                let scale = VIDEO_SCALES[self.rng.below(VIDEO_SCALES.len() as u64) as usize];
                let scale: Value = if scale == 1.0 { 1.into() } else { scale.into() };
                a.insert("scale".into(), scale);
            }
        }
        a
    }

    fn layout(&mut self) -> Obj {
        let mut l = Obj::new();
        let ty = self.pick(LAYOUT_TYPES);
        l.insert("type".into(), ty.into());
        if matches!(ty, "split" | "float") {
            l.insert("placement".into(), self.pick(PLACEMENTS).into());
        }
        let a = self.attachment(true);
        l.insert("attachment".into(), Value::Object(a));
        if self.chance(0.3) {
            let mut small = Obj::new();
            small.insert("type".into(), "stack".into());
            let mut large = Obj::new();
            large.insert("type".into(), "split".into());
            large.insert("placement".into(), self.pick(PLACEMENTS).into());
            let mut o = Obj::new();
            o.insert("small".into(), Value::Object(small));
            o.insert("large".into(), Value::Object(large));
            l.insert("viewport_overrides".into(), Value::Object(o));
        }
        l
    }

    fn choices(&mut self, labels: &[&str], n: i64, images: bool, image_chance: f64) -> Value {
        let with_images = images || self.chance(image_chance);
        (0..n)
            .map(|i| {
                let mut c = Obj::new();
                c.insert("id".into(), self.token(ALNUM, 12).into());
                c.insert("ref".into(), self.token(HEX, 8).into());
                c.insert("label".into(), labels[i as usize].into());
                if with_images {
                    let mut a = Obj::new();
                    a.insert("type".into(), "image".into());
                    let h = self.image_href();
                    a.insert("href".into(), h.into());
                    c.insert("attachment".into(), Value::Object(a));
                }
                Value::Object(c)
            })
            .collect::<Vec<_>>()
            .into()
    }

    fn required(&mut self, v: &mut Obj) {
        let required = self.chance(0.5);
        let value: Value = if self.chance(REQUIRED_AS_STRING) {
            required.to_string().into()
        } else {
            required.into()
        };
        v.insert("required".into(), value);
    }

    fn description(&mut self, p: &mut Obj, chance: f64) {
        if self.chance(chance) {
            p.insert("description".into(), self.pick(DESCRIPTIONS).into());
        }
    }

    fn steps(&mut self, p: &mut Obj, lo: i64, hi: i64) {
        let steps = self.range(lo, hi);
        let value: Value = if self.chance(STEPS_AS_FLOAT) {
            (steps as f64).into()
        } else {
            steps.into()
        };
        p.insert("steps".into(), value);
    }

    fn labels(&mut self, p: &mut Obj, center: bool) {
        if self.chance(0.7) {
            let mut l = Obj::new();
            l.insert("left".into(), self.pick(LABEL_LEFT).into());
            if center && self.chance(0.5) {
                l.insert("center".into(), self.pick(LABEL_CENTER).into());
            }
            l.insert("right".into(), self.pick(LABEL_RIGHT).into());
            p.insert("labels".into(), Value::Object(l));
        }
    }

    /// One field; `top` fields may be groups (a group's fields are not).
    fn field(&mut self, top: bool) -> Value {
        let kind = loop {
            let k = KINDS[self.rng.below(KINDS.len() as u64) as usize];
            if top || k != "group" {
                break k;
            }
        };
        let mut f = Obj::new();
        f.insert("id".into(), self.token(ALNUM, 12).into());
        f.insert("title".into(), self.pick(titles(kind)).into());
        let r = self.field_ref(kind);
        f.insert("ref".into(), r.into());
        let mut p = Obj::new();
        let mut v = Obj::new();
        let mut validations = true;
        let mut attachment_chance = 0.12;
        match kind {
            "short_text" | "long_text" => {
                self.description(&mut p, 0.3);
                self.required(&mut v);
                if self.chance(0.5) {
                    let max = self.range(20, 5000);
                    let value: Value = if self.chance(MAX_LENGTH_AS_STRING) {
                        max.to_string().into()
                    } else {
                        max.into()
                    };
                    v.insert("max_length".into(), value);
                }
                if kind == "short_text" && self.chance(0.2) {
                    let min = self.range(1, 10);
                    v.insert("min_length".into(), min.into());
                }
            }
            "multiple_choice" => {
                p.insert("randomize".into(), self.chance(0.3).into());
                p.insert("allow_multiple_selection".into(), self.chance(0.4).into());
                p.insert("allow_other_choice".into(), self.chance(0.3).into());
                p.insert("vertical_alignment".into(), self.chance(0.7).into());
                let n = self.range(2, 6);
                let c = self.choices(CHOICE_LABELS, n, false, 0.15);
                p.insert("choices".into(), c);
                self.description(&mut p, 0.3);
                self.required(&mut v);
            }
            "picture_choice" => {
                p.insert("randomize".into(), self.chance(0.3).into());
                p.insert("allow_multiple_selection".into(), self.chance(0.4).into());
                p.insert("allow_other_choice".into(), self.chance(0.2).into());
                p.insert("supersized".into(), self.chance(0.3).into());
                p.insert("show_labels".into(), self.chance(0.8).into());
                let n = self.range(2, 6);
                let c = self.choices(CHOICE_LABELS, n, true, 1.0);
                p.insert("choices".into(), c);
                self.required(&mut v);
            }
            "dropdown" => {
                p.insert("alphabetical_order".into(), self.chance(0.5).into());
                p.insert("randomize".into(), self.chance(0.2).into());
                let n = self.range(3, 9);
                let c = self.choices(COUNTRIES, n, false, 0.0);
                p.insert("choices".into(), c);
                self.required(&mut v);
            }
            "ranking" => {
                p.insert("randomize".into(), self.chance(0.3).into());
                p.insert("allow_multiple_selection".into(), false.into());
                let n = self.range(3, 6);
                let c = self.choices(FEATURES, n, false, 0.0);
                p.insert("choices".into(), c);
                self.required(&mut v);
            }
            "yes_no" | "email" | "file_upload" | "legal" => {
                self.description(&mut p, 0.4);
                self.required(&mut v);
            }
            "website" => {
                // Typeform answers an empty `properties` object for it.
                self.required(&mut v);
            }
            "phone_number" => {
                if self.chance(0.8) {
                    p.insert(
                        "default_country_code".into(),
                        self.pick(COUNTRY_CODES).into(),
                    );
                }
                self.required(&mut v);
            }
            "number" => {
                self.description(&mut p, 0.2);
                self.required(&mut v);
                let min = self.range(0, 100);
                if self.chance(0.6) {
                    v.insert("min_value".into(), min.into());
                }
                if self.chance(0.6) {
                    let max = min + self.range(1, 10_000);
                    let value: Value = if self.chance(MAX_VALUE_AS_FLOAT) {
                        (max as f64 + 0.5).into()
                    } else {
                        max.into()
                    };
                    v.insert("max_value".into(), value);
                }
            }
            "rating" => {
                self.steps(&mut p, 3, 10);
                p.insert("shape".into(), self.pick(SHAPES).into());
                self.description(&mut p, 0.2);
                self.required(&mut v);
            }
            "opinion_scale" => {
                self.steps(&mut p, 5, 11);
                p.insert("start_at_one".into(), self.chance(0.5).into());
                self.labels(&mut p, true);
                self.required(&mut v);
            }
            "nps" => {
                self.labels(&mut p, true);
                self.description(&mut p, 0.3);
                self.required(&mut v);
            }
            "date" => {
                p.insert("structure".into(), self.pick(DATE_STRUCTURES).into());
                p.insert("separator".into(), self.pick(DATE_SEPARATORS).into());
                self.required(&mut v);
            }
            "group" => {
                validations = false;
                p.insert("button_text".into(), self.pick(BUTTON_TEXTS).into());
                p.insert("show_button".into(), self.chance(0.8).into());
                self.description(&mut p, 0.4);
                let n = self.range(1, 4);
                let inner: Vec<Value> = (0..n).map(|_| self.field(false)).collect();
                p.insert("fields".into(), Value::Array(inner));
                attachment_chance = 0.3;
            }
            "statement" => {
                validations = false;
                p.insert("button_text".into(), self.pick(BUTTON_TEXTS).into());
                p.insert("hide_marks".into(), self.chance(0.5).into());
                self.description(&mut p, 0.3);
                attachment_chance = 0.4;
            }
            other => unreachable!("unknown field type {other}"),
        }
        // Typeform answers `properties: {}` for a field without properties, most of the time.
        if !p.is_empty() || self.chance(0.8) {
            f.insert("properties".into(), Value::Object(p));
        }
        if validations && self.chance(0.9) {
            f.insert("validations".into(), Value::Object(v));
        }
        f.insert("type".into(), kind.into());
        if self.chance(attachment_chance) {
            let a = self.attachment(false);
            f.insert("attachment".into(), Value::Object(a));
        }
        if self.chance(0.12) {
            let l = self.layout();
            f.insert("layout".into(), Value::Object(l));
        }
        Value::Object(f)
    }
}

fn href(url: String) -> Value {
    let mut o = Obj::new();
    o.insert("href".into(), url.into());
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn form(seed: u64, i: u64) -> Value {
        serde_json::from_slice(&generate_form_json(seed, i)).unwrap()
    }

    /// Every field of a form, a group's nested fields included.
    fn all_fields(form: &Value) -> Vec<&Value> {
        let mut out = Vec::new();
        for f in form["fields"].as_array().unwrap() {
            out.push(f);
            if let Some(inner) = f["properties"].get("fields").and_then(Value::as_array) {
                out.extend(inner);
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs() {
        for i in [0, 1, 7, 999] {
            assert_eq!(generate_form_json(42, i), generate_form_json(42, i));
        }
        assert_ne!(generate_form_json(42, 7), generate_form_json(43, 7));
        assert_ne!(generate_form_json(42, 7), generate_form_json(42, 8));
        // Not the catalogue form of the same index.
        assert_ne!(
            generate_form_json(42, 7),
            crate::generator::generate_form_json(42, 7)
        );
    }

    #[test]
    fn pinned_bytes() {
        // A change to the generator changes the forms the golden snapshots and the lead's end
        // to end runs were made from: make it on purpose (and update the snapshots' README).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..1000 {
            for &b in generate_form_json(42, i).iter().chain(b"\n") {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        assert_eq!(h, PIN_42_1000, "{h:#x}");
    }

    const PIN_42_1000: u64 = 447_195_649_824_614_740;

    #[test]
    fn golden_snapshots_are_these_forms() {
        // crates/form-model/test-data/typeform/snapshots: copies of some of these forms that the
        // golden cases `tf-generated-*` are made from.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crates/form-model/test-data/typeform/snapshots");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let id = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let index = parse_form_id(&id).unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                generate_form_json(42, index),
                "{id}"
            );
            n += 1;
        }
        assert!(n >= 3, "{n} snapshots in {}", dir.display());
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_form_id(&form_id(0)), Some(0));
        assert_eq!(parse_form_id("tf-000999"), Some(999));
        assert_eq!(parse_form_id("tf-1234567"), Some(1_234_567));
        assert_eq!(parse_form_id("tf-0000001"), None);
        assert_eq!(parse_form_id("tf-12"), None);
        assert_eq!(parse_form_id("form-000001"), None);
        assert_eq!(crate::generator::parse_form_id("tf-000001"), None);
    }

    #[test]
    fn every_kind_and_every_part_appears_over_1000_forms() {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut nested_kinds: BTreeSet<String> = BTreeSet::new();
        let mut form_keys: BTreeMap<String, usize> = BTreeMap::new();
        let (mut fields, mut with_ref) = (0usize, 0usize);
        for i in 0..1000 {
            let f = form(42, i);
            let o = f.as_object().unwrap();
            assert_eq!(o["id"], form_id(i));
            assert!(o["title"].is_string());
            for k in o.keys() {
                *form_keys.entry(k.clone()).or_default() += 1;
            }
            let top = o["fields"].as_array().unwrap();
            assert!((1..=10).contains(&top.len()));
            for field in top {
                let kind = field["type"].as_str().unwrap();
                *kinds
                    .entry(KINDS.iter().find(|k| **k == kind).unwrap())
                    .or_default() += 1;
                if kind == "group" {
                    let inner = field["properties"]["fields"].as_array().unwrap();
                    assert!(!inner.is_empty());
                    for n in inner {
                        assert_ne!(n["type"], "group");
                        nested_kinds.insert(n["type"].as_str().unwrap().to_owned());
                    }
                }
            }
            for field in all_fields(&f) {
                fields += 1;
                assert!(
                    field["id"].is_string() && field["type"].is_string(),
                    "{field}"
                );
                with_ref += usize::from(field["ref"].is_string());
                assert!(field.get("reference").is_none());
            }
        }
        assert_eq!(kinds.len(), 19, "{kinds:?}");
        for (kind, n) in &kinds {
            assert!(*n >= 150, "{kind}: {n} fields");
        }
        assert!(nested_kinds.len() >= 15, "{nested_kinds:?}");
        assert_eq!(with_ref, fields);
        for key in [
            "id",
            "type",
            "title",
            "workspace",
            "theme",
            "settings",
            "variables",
            "hidden",
            "welcome_screens",
            "thankyou_screens",
            "logic",
            "fields",
            "created_at",
            "last_updated_at",
            "published_at",
            "_links",
        ] {
            let n = form_keys.get(key).copied().unwrap_or(0);
            assert!(n > 0, "no form has `{key}`");
            if !["id", "title", "fields", "created_at", "_links"].contains(&key) {
                assert!(n < 1000, "every form has `{key}`: not optional");
            }
        }
    }

    /// Counts of `(path, JSON type)` over the fields and forms of 1,000 forms.
    fn type_counts() -> BTreeMap<(String, &'static str), usize> {
        fn walk(
            v: &Value,
            path: String,
            out: &mut BTreeMap<(String, &'static str), usize>,
            skip_fields: bool,
        ) {
            match v {
                Value::Object(o) => {
                    for (k, x) in o {
                        if skip_fields && k == "fields" {
                            continue;
                        }
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(x, p, out, false);
                    }
                }
                other => {
                    let t = match other {
                        Value::Null => "null",
                        Value::Bool(_) => "boolean",
                        Value::Number(n) if n.is_f64() => "float",
                        Value::Number(_) => "integer",
                        Value::String(_) => "string",
                        Value::Array(_) => "array",
                        Value::Object(_) => unreachable!(),
                    };
                    *out.entry((path, t)).or_default() += 1;
                }
            }
        }
        let mut out = BTreeMap::new();
        for i in 0..1000 {
            let f = form(42, i);
            walk(&f, "form".into(), &mut out, true);
            for field in all_fields(&f) {
                walk(field, "field".into(), &mut out, false);
            }
        }
        out
    }

    #[test]
    fn type_conflicts_at_the_documented_rates() {
        let counts = type_counts();
        let share = |path: &str, ty: &'static str| {
            let total: usize = counts
                .iter()
                .filter(|((p, _), _)| p == path)
                .map(|(_, n)| n)
                .sum();
            let n = counts.get(&(path.to_owned(), ty)).copied().unwrap_or(0);
            (n, total)
        };
        for (path, ty, rate) in [
            (
                "field.validations.max_length",
                "string",
                MAX_LENGTH_AS_STRING,
            ),
            ("field.properties.steps", "float", STEPS_AS_FLOAT),
            ("field.validations.max_value", "float", MAX_VALUE_AS_FLOAT),
            ("field.validations.required", "string", REQUIRED_AS_STRING),
        ] {
            let (n, total) = share(path, ty);
            assert!(n > 0, "{path}: no {ty}");
            let seen = n as f64 / total as f64;
            assert!(
                (rate * 0.4..rate * 2.0).contains(&seen),
                "{path}: {ty} in {n} of {total}, documented {rate}"
            );
        }
        // Typeform's own mixed numbers: a whole video scale or price is an integer in JSON.
        for path in ["field.attachment.scale", "form.variables.price"] {
            let (ints, total) = share(path, "integer");
            let (floats, _) = share(path, "float");
            assert!(ints > 0 && floats > 0 && ints + floats == total, "{path}");
        }
        // The same attribute with one JSON type everywhere, as a control.
        assert_eq!(
            share("field.ref", "string").0,
            share("field.ref", "string").1
        );
    }

    #[test]
    fn odd_names_in_a_few_forms() {
        let mut odd_forms = 0;
        let mut names = BTreeSet::new();
        for i in 0..1000 {
            let f = form(42, i);
            let Some(vars) = f.get("variables").and_then(Value::as_object) else {
                continue;
            };
            let odd: Vec<&String> = vars
                .keys()
                .filter(|k| !["score", "price"].contains(&k.as_str()))
                .collect();
            if !odd.is_empty() {
                odd_forms += 1;
                assert!(vars.contains_key("score"), "{vars:?}");
            }
            names.extend(odd.into_iter().cloned());
        }
        let expected: BTreeSet<String> = ODD_VARIABLE_NAMES
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        assert_eq!(names, expected);
        let rate = odd_forms as f64 / 1000.0;
        assert!(
            (ODD_VARIABLES * 0.6..ODD_VARIABLES * 1.5).contains(&rate),
            "{odd_forms} forms with odd names"
        );
        let digit = (0..1000)
            .filter(|&i| form(42, i).get(DIGIT_KEY).is_some_and(Value::is_boolean))
            .count();
        let rate = digit as f64 / 1000.0;
        assert!(
            (DIGIT_TOP_LEVEL * 0.5..DIGIT_TOP_LEVEL * 1.6).contains(&rate),
            "{digit} forms with `{DIGIT_KEY}`"
        );
    }
}
