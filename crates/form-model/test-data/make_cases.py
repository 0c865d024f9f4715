#!/usr/bin/env python3
"""Writes the golden cases under cases/: input.json (a form.enriched value) and expected.json.

The expected rows are written out by hand below (only the `form_` copy of the form row is
composed, by prefixing); timestamps are text here and compared as microseconds by the tests.
Run from this directory; the output is committed.
"""
import json, os, shutil

RT = "2026-11-25T18:32:04.123456Z"
SRC = {"topic": "form.events", "partition": 1, "offset": 42}

def enriched(event, form, rt=RT):
    return {"event": event, "form": form, "retrieved_timestamp": rt, "source": SRC}

def prefixed(form_row):
    return {"form_" + k: v for k, v in form_row.items()}

def rows(form_row, field_rows):
    return {"form": [form_row], "form_field": [dict(f, **prefixed(form_row)) for f in field_rows]}

cases = {}

# --- every field kind of the generator, three-deep nesting, arrays, non-ASCII -------------
choices = [{"id": "c1", "label": "Sí, claro", "ref": "r-1"},
           {"id": "c2", "label": "いいえ", "ref": "r-2"},
           {"id": "c3", "label": "Peut-être \"oui\"", "ref": "r-3"}]
form = {
    "id": "form-000123", "type": "score", "title": "Encuesta de satisfacción – 顧客 😀",
    "settings": {"language": "es", "progress_bar": "percentage", "show_time_to_complete": False,
                 "show_number_of_submissions": True,
                 "redirect_after_submit_url": "https://example.com/gracias?a=1&b=ü",
                 "meta": {"allow_indexing": True, "description": "Descripción\nen dos líneas"}},
    "fields": [
        {"id": "f-open", "title": "¿Cómo te llamas?", "reference": "ref-open", "type": "open_text",
         "validations": {"required": True, "max_length": 140},
         "attachment": {"type": "image", "href": "https://images.example.com/ü.png"}},
        {"id": "f-phone", "title": "Teléfono", "reference": "ref-phone", "type": "phone_number",
         "properties": {"default_country_code": "es"}, "validations": {"required": False}},
        {"id": "f-mc", "title": "¿Volverías?", "reference": "ref-mc", "type": "multiple_choice",
         "properties": {"choices": choices, "allow_multiple_selection": False, "randomize": True,
                        "allow_other_choice": False, "description": "Elige una"},
         "validations": {"required": True}},
        {"id": "f-rating", "title": "Valora", "reference": "ref-rating", "type": "rating",
         "properties": {"steps": 5, "shape": "star"}, "validations": {"required": False}},
        {"id": "f-scale", "title": "Escala", "reference": "ref-scale", "type": "opinion_scale",
         "properties": {"steps": 11, "start_at_one": False,
                        "labels": {"left": "nada", "center": "neutral", "right": "mucho"}}},
        {"id": "f-number", "title": "Edad", "reference": "ref-number", "type": "number",
         "validations": {"min_value": -5, "max_value": 120, "required": True}},
        {"id": "f-statement", "title": "Gracias 🙏", "reference": "ref-statement", "type": "statement",
         "properties": {"button_text": "Continuar", "hide_marks": True},
         "attachment": {"type": "video", "href": "https://video.example.com/v"}},
        {"id": "f-yesno", "title": "¿Eres mayor de edad?", "reference": "ref-yesno", "type": "yes_no",
         "properties": {"description": "Sí o no"}, "validations": {"required": True}},
    ],
}
event = {"form_id": "form-000123", "form_title": "encuesta", "event_happened_at": "2024-02-29 23:59:59",
         "event_type": "updated", "actor": {"id": 7, "name": "Zoë"}, "tags": ["a", "b"]}
form_row = {"id": "form-000123", "type": "score", "title": "Encuesta de satisfacción – 顧客 😀",
            "settings_language": "es", "settings_progress_bar": "percentage",
            "settings_show_time_to_complete": False, "settings_show_number_of_submissions": True,
            "settings_redirect_after_submit_url": "https://example.com/gracias?a=1&b=ü",
            "settings_meta_allow_indexing": True, "settings_meta_description": "Descripción\nen dos líneas",
            "retrieved_timestamp": RT, "event_happened_at": "2024-02-29 23:59:59", "event_type": "updated"}
fields = [
    {"id": "f-open", "title": "¿Cómo te llamas?", "reference": "ref-open", "type": "open_text",
     "validations_required": True, "validations_max_length": 140,
     "attachment_type": "image", "attachment_href": "https://images.example.com/ü.png"},
    {"id": "f-phone", "title": "Teléfono", "reference": "ref-phone", "type": "phone_number",
     "properties_default_country_code": "es", "validations_required": False},
    {"id": "f-mc", "title": "¿Volverías?", "reference": "ref-mc", "type": "multiple_choice",
     "properties_choices": '[{"id":"c1","label":"Sí, claro","ref":"r-1"},{"id":"c2","label":"いいえ","ref":"r-2"},{"id":"c3","label":"Peut-être \\"oui\\"","ref":"r-3"}]',
     "properties_allow_multiple_selection": False, "properties_randomize": True,
     "properties_allow_other_choice": False, "properties_description": "Elige una",
     "validations_required": True},
    {"id": "f-rating", "title": "Valora", "reference": "ref-rating", "type": "rating",
     "properties_steps": 5, "properties_shape": "star", "validations_required": False},
    {"id": "f-scale", "title": "Escala", "reference": "ref-scale", "type": "opinion_scale",
     "properties_steps": 11, "properties_start_at_one": False, "properties_labels_left": "nada",
     "properties_labels_center": "neutral", "properties_labels_right": "mucho"},
    {"id": "f-number", "title": "Edad", "reference": "ref-number", "type": "number",
     "validations_min_value": -5, "validations_max_value": 120, "validations_required": True},
    {"id": "f-statement", "title": "Gracias 🙏", "reference": "ref-statement", "type": "statement",
     "properties_button_text": "Continuar", "properties_hide_marks": True,
     "attachment_type": "video", "attachment_href": "https://video.example.com/v"},
    {"id": "f-yesno", "title": "¿Eres mayor de edad?", "reference": "ref-yesno", "type": "yes_no",
     "properties_description": "Sí o no", "validations_required": True},
]
cases["all-field-kinds"] = (enriched(event, form), rows(form_row, fields))

# --- missing optional parts -----------------------------------------------------------------
form = {"id": "m1", "title": "Minimal", "settings": {"language": "fr"},
        "fields": [{"id": "x1", "title": "Sans validations", "reference": "r", "type": "open_text"},
                   {"id": "x2", "type": "statement", "properties": {}},
                   {"id": "x3", "title": None, "reference": "r3", "type": "yes_no"}]}
event = {"form_id": "m1", "event_happened_at": "2022-10-02T15:00:15+02:00", "event_type": "created"}
form_row = {"id": "m1", "title": "Minimal", "settings_language": "fr", "retrieved_timestamp": RT,
            "event_happened_at": "2022-10-02 13:00:15", "event_type": "created"}
fields = [{"id": "x1", "title": "Sans validations", "reference": "r", "type": "open_text"},
          {"id": "x2", "type": "statement"},
          {"id": "x3", "title": None, "reference": "r3", "type": "yes_no"}]
cases["missing-optional-parts"] = (enriched(event, form), rows(form_row, fields))

form = {"id": "nf", "type": "form", "title": "No fields at all"}
event = {"form_id": "nf", "form_title": "x", "event_happened_at": "2022-10-02 13:00:15", "event_type": "created"}
cases["form-without-fields"] = (enriched(event, form), {"form": [
    {"id": "nf", "type": "form", "title": "No fields at all", "retrieved_timestamp": RT,
     "event_happened_at": "2022-10-02 13:00:15", "event_type": "created"}], "form_field": []})

# --- deleted ------------------------------------------------------------------------------------
event = {"form_id": "gone1", "form_title": "Формуляр удалён", "event_happened_at": "2023-01-31 08:00:00",
         "event_type": "deleted"}
cases["deleted-form-gone"] = (enriched(event, None, "2023-01-31T08:00:01Z"), {"form": [
    {"id": "gone1", "title": "Формуляр удалён", "retrieved_timestamp": "2023-01-31T08:00:01Z",
     "event_happened_at": "2023-01-31 08:00:00", "event_type": "deleted"}], "form_field": []})

form = {"id": "still", "type": "quiz", "title": "Still here", "fields": [{"id": "s1", "title": "Q", "reference": "r", "type": "yes_no"}]}
event = {"form_id": "still", "form_title": "old", "event_happened_at": "2023-01-31 08:00:00", "event_type": "deleted"}
form_row = {"id": "still", "type": "quiz", "title": "Still here", "retrieved_timestamp": RT,
            "event_happened_at": "2023-01-31 08:00:00", "event_type": "deleted"}
cases["deleted-form-still-there"] = (enriched(event, form), rows(form_row, [{"id": "s1", "title": "Q", "reference": "r", "type": "yes_no"}]))

# --- attributes outside the catalogue: flattened all the same (the sink then refuses them) --------
form = {"id": "e1", "title": "Extra", "theme": {"colors": {"answer": {"hex": "#fff", "alpha": 0.5}}},
        "hidden": ["utm_source", 3, None], "score": 1.25,
        "fields": [{"id": "e-f", "title": "F", "reference": "r", "type": "rating", "properties": {"steps": 3, "extra": {"a": {"b": {"c": [1, {"d": 2}]}}}}}]}
event = {"form_id": "e1", "event_happened_at": "2022-10-02 13:00:15", "event_type": "updated"}
form_row = {"id": "e1", "title": "Extra", "theme_colors_answer_hex": "#fff", "theme_colors_answer_alpha": 0.5,
            "hidden": '["utm_source",3,null]', "score": 1.25, "retrieved_timestamp": RT,
            "event_happened_at": "2022-10-02 13:00:15", "event_type": "updated"}
fields = [{"id": "e-f", "title": "F", "reference": "r", "type": "rating", "properties_steps": 3,
           "properties_extra_a_b_c": '[1,{"d":2}]'}]
cases["schema-mismatch-extra-attributes"] = (enriched(event, form), rows(form_row, fields))

# --- bad inputs: record-level errors ---------------------------------------------------------------
good_event = {"form_id": "abcde", "form_title": "t", "event_happened_at": "2022-10-02 13:00:15", "event_type": "created"}
good_form = {"id": "abcde", "title": "t", "fields": []}
def without(d, k):
    d = dict(d); del d[k]; return d
def err(reason, field=None):
    e = {"reason": reason}
    if field: e["field"] = field
    return {"error": e}
bad = {
    "bad-not-json": ('{"event": {"form_id": "abcde", ', err("invalid_json")),
    "bad-not-json-binary": ("\u0000\u0001garbage", err("invalid_json")),
    "bad-not-an-object": ([1, 2, 3], err("wrong_type", "(record)")),
    "bad-missing-event": ({"form": good_form, "retrieved_timestamp": RT}, err("missing_field", "event")),
    "bad-no-form-id": (enriched(without(good_event, "form_id"), good_form), err("missing_field", "event.form_id")),
    "bad-empty-form-id": (enriched(dict(good_event, form_id=""), good_form), err("wrong_type", "event.form_id")),
    "bad-form-id-number": (enriched(dict(good_event, form_id=12345), good_form), err("wrong_type", "event.form_id")),
    "bad-no-event-type": (enriched(without(good_event, "event_type"), good_form), err("missing_field", "event.event_type")),
    "bad-form-title-number": (enriched(dict(good_event, form_title=5), good_form), err("wrong_type", "event.form_title")),
    "bad-timestamp-text": (enriched(dict(good_event, event_happened_at="02/10/2022 13:00"), good_form), err("invalid_timestamp", "event.event_happened_at")),
    "bad-timestamp-impossible-date": (enriched(dict(good_event, event_happened_at="2022-02-30 10:00:00"), good_form), err("invalid_timestamp", "event.event_happened_at")),
    "bad-timestamp-number": (enriched(dict(good_event, event_happened_at=1664715615), good_form), err("wrong_type", "event.event_happened_at")),
    "bad-retrieved-timestamp": (enriched(good_event, good_form, "yesterday"), err("invalid_timestamp", "retrieved_timestamp")),
    "bad-form-null-not-deleted": (enriched(good_event, None), err("form_not_found")),
    "bad-deleted-gone-no-title": (enriched(dict(without(good_event, "form_title"), event_type="deleted"), None), err("missing_field", "event.form_title")),
    "bad-fields-not-array": (enriched(good_event, dict(good_form, fields={"a": 1})), err("wrong_type", "form.fields")),
    "bad-field-not-object": (enriched(good_event, dict(good_form, fields=[{"id": "ok", "type": "x"}, "nope"])), err("wrong_type", "form.fields[1]")),
    "bad-form-is-string": (enriched(good_event, "abcde"), err("wrong_type", "form")),
}

shutil.rmtree("cases", ignore_errors=True)
os.makedirs("cases")
def write(name, inp, exp):
    os.makedirs(f"cases/{name}")
    with open(f"cases/{name}/input.json", "w", encoding="utf-8") as f:
        f.write(inp if isinstance(inp, str) else json.dumps(inp, ensure_ascii=False, indent=1))
    with open(f"cases/{name}/expected.json", "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, indent=1)
        f.write("\n")
for name, (inp, exp) in cases.items():
    write(name, inp, exp)
for name, (inp, exp) in bad.items():
    write(name, inp, exp)
print(len(cases) + len(bad), "cases")
