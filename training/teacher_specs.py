"""What the command line says about teachers: `--teacher KIND:PATH[:WEIGHT]` specs and the
`--layer_map` JSON (which teacher layer is matched to which student layer).

Layers are numbered as in MiniTransformer.hidden_states: 0 = embedding output, i = output of
decoder block i (1..num_layers).
"""
import json
import math

# "minillm": a MiniLLM checkpoint folder (train.py's output); "llama", "qwen2", "qwen3": a
# Hugging Face folder of that family ("mistral" reads exactly like "llama"; config.json's
# model_type decides the architecture); "ngram": counted on the training stream.
# "flux" is the older name of "minillm" and still accepted.
KINDS = ("minillm", "llama", "mistral", "qwen2", "qwen3", "ngram", "flux")
HF_KINDS = ("llama", "qwen2", "qwen3")          # read by teachers.load_llama_teacher
ALIASES = {"mistral": "llama", "flux": "minillm"}


def _parse_weight(spec, text):
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"teacher spec {spec!r}: weight {text!r} is not a number") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"teacher spec {spec!r}: weight must be a finite number >= 0, got {text}")
    return weight


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_teacher_spec(spec):
    """"KIND:PATH[:WEIGHT]" or "KIND=PATH" -> (kind, path, weight). "mistral" reads as "llama",
    "flux" (the older name) as "minillm";
    an n-gram needs no path. With ':' the last part is the weight when there are three or more;
    "KIND=PATH" takes the whole rest as the path (for paths holding ':'), weight 1.
    Examples: "llama:models/tiny" -> ("llama", "models/tiny", 1.0);
    "minillm:out/ckpt:0.5" -> ("minillm", "out/ckpt", 0.5); "ngram:0.5" and "ngram::0.5" ->
    ("ngram", "", 0.5); "llama=C:/models/tiny" -> ("llama", "C:/models/tiny", 1.0)."""
    head, eq, rest = spec.partition("=")
    if eq and ":" not in head:                      # KIND=PATH: the path verbatim
        kind, path, weight = head.strip().lower(), rest, 1.0
        parts = [head]
    else:
        parts = spec.split(":")
        kind = parts[0].strip().lower()
        path = ":".join(parts[1:-1]) if len(parts) > 2 else (parts[1] if len(parts) == 2 else "")
        weight = _parse_weight(spec, parts[-1]) if len(parts) > 2 else 1.0
        if kind == "ngram" and len(parts) == 2 and _is_number(path):
            path, weight = "", _parse_weight(spec, path)     # "ngram:0.5": a weight, as it looks
    if kind not in KINDS:
        raise ValueError(f"teacher spec {spec!r}: unknown kind {parts[0]!r}, use one of {', '.join(KINDS)}")
    if kind != "ngram" and not path:
        raise ValueError(f"teacher spec {spec!r}: a {kind} teacher needs a path (KIND:PATH[:WEIGHT], "
                         f"or KIND=PATH for a path holding ':')")
    return ALIASES.get(kind, kind), path, weight


def auto_layer_map(teacher_layers, student_layers):
    """Match layers spread evenly over depth: {teacher hidden index: student hidden index}.

    The deeper model's layers are sampled at the shallower one's relative depths (rounded),
    so the last layers always meet. Teacher 12, student 4 -> {3: 1, 6: 2, 9: 3, 12: 4};
    teacher 2, student 4 -> {1: 2, 2: 4}. A teacher without layers (n-gram) -> {}.
    """
    m = min(teacher_layers, student_layers)
    return {(2 * j * teacher_layers + m) // (2 * m): (2 * j * student_layers + m) // (2 * m)
            for j in range(1, m + 1)}


def _layer_index(value, what, num_layers, teacher_name):
    """A hidden-state index from JSON (an int, or an int written as a string) that exists."""
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        i = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"layer map for {teacher_name}: {what} layer {value!r} is not an integer") from None
    if not 0 <= i <= num_layers:
        raise ValueError(f"layer map for {teacher_name}: {what} layer {i} does not exist "
                         f"(hidden states 0..{num_layers}, 0 = embeddings)")
    return i


def parse_layer_map(json_text_or_dict, teacher_name, teacher_layers, student_layers):
    """This teacher's {teacher layer: student layer} from --layer_map, e.g.
    '{"llama": {"8": 1, "16": 2}}'. No map, or no entry for this teacher, means auto_layer_map;
    an empty entry ({"llama": {}}) means no hidden-state matching for it."""
    spec = json_text_or_dict
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return auto_layer_map(teacher_layers, student_layers)
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"layer map is not valid JSON (column {e.colno}): {e.msg}") from None
    if not isinstance(spec, dict):
        raise ValueError(f'layer map must be a JSON object like {{"llama": {{"8": 1}}}}, got {type(spec).__name__}')
    if teacher_name not in spec:
        return auto_layer_map(teacher_layers, student_layers)
    pairs = spec[teacher_name]
    if not isinstance(pairs, dict):
        raise ValueError(f"layer map for {teacher_name} must be an object of teacher layer: student layer")
    return {_layer_index(t, "teacher", teacher_layers, teacher_name):
            _layer_index(s, "student", student_layers, teacher_name) for t, s in pairs.items()}
