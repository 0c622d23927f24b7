#!/usr/bin/env python3
"""--chat: rendering against transformers' apply_chat_template, generation, errors, a terminal session.

1. The "chat" conversations of tokenizer_cases.json (rendered by transformers'
   apply_chat_template, ids from tokenizer.json with add_special_tokens=False):
   `run MODEL --chat --tokenize [--chat-history FILE] -p LAST_USER_MESSAGE`
   must give exactly those ids (Llama 2 [INST] template on the llama fixture;
   Qwen2's ChatML template on the qwen2 and smollm3 fixtures).
2. Real templates of the other families (Mistral v0.1 / v0.3, Llama 3 / 3.1,
   DeepSeek, Qwen2.5, plain ChatML), put into a copy of a fixture folder:
   the family must be detected, and the rendering must equal the text the
   template renders (written out below; checked with jinja2 when installed).
3. A short generation, --json, the error cases, a model without a template.
4. A multi-turn session in a pseudo-terminal: the second turn feeds only the
   new tokens (the KV cache is kept).
5. Ctrl-C, Ctrl-D and empty lines in a pseudo-terminal, with the shipped
   model: Ctrl-C stops an answer (kept in the cache) and gives the prompt back,
   at the prompt it ends the chat; Ctrl-D ends it; empty lines are passed over.

Usage: check_chat.py BIN_DIR TMP_DIR   Prints PASS/FAIL/SKIP lines and "N passed, N failed".
"""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

from harness import BIN, TMP, check, export, finish, have, one_error_line, run

HF = "tests/fixtures/hf"
ASSETS = os.environ.get("ASSETS", "../shared/assets")


def ids_of(rc, out):
    try:
        return json.loads(out) if rc == 0 else None
    except ValueError:
        return None


def history_file(messages, name="history.json"):
    path = os.path.join(TMP, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(messages, f, ensure_ascii=False)
    return path


def chat_tokenize(model, messages, *extra):
    """--chat --tokenize for messages whose last one is the user's: earlier ones go in a history file."""
    args = [model, "--chat", "--tokenize", *extra]
    if len(messages) > 1:
        args += ["--chat-history", history_file(messages[:-1])]
    args += ["-p", messages[-1]["content"]]
    rc, out, err = run(*args)
    return ids_of(rc, out), err


# ---------------------------------------------------------------------------
# 1. transformers' renderings of the fixtures' own templates
models = {}
for name in ("llama", "qwen2", "smollm3"):
    out = os.path.join(TMP, f"chat_{name}_f32.bin")
    ok, err = export(os.path.join(HF, name), out)
    check(ok, f"{name}: ./export to f32" + ("" if ok else f": {err.strip()[-300:]}"))
    models[name] = out if ok else None

cases = json.load(open(os.path.join(HF, "tokenizer_cases.json"), encoding="utf-8"))["chat"]
for kind, names in (("spm", ("llama",)), ("bpe", ("qwen2", "smollm3"))):
    for name in names:
        if not models[name]:
            continue
        for i, case in enumerate(cases[kind]):
            msgs = case["messages"]
            got, err = chat_tokenize(models[name], msgs)
            roles = "/".join(m["role"] for m in msgs)
            check(got == case["ids"], f"{name} chat case {i} ({roles}): --chat --tokenize equals apply_chat_template's "
                  f"{len(case['ids'])} ids" + ("" if got == case["ids"] else f"; got {got and got[:16]} {err.strip()[:200]}"))
            if msgs[0]["role"] == "system":  # the same conversation with the system prompt from --system
                got2, err = chat_tokenize(models[name], msgs[1:], "--system", msgs[0]["content"])
                check(got2 == case["ids"], f"{name} chat case {i}: --system gives the same ids as a system message "
                      "in the history")

# The message to answer may also be the history's last one, or come on stdin.
if models["qwen2"]:
    msgs = cases["bpe"][0]["messages"]
    rc, out, err = run(models["qwen2"], "--chat", "--tokenize", "--chat-history", history_file(msgs))
    check(ids_of(rc, out) == cases["bpe"][0]["ids"], "qwen2: a history ending with a user message is answered as is")
    msgs = cases["bpe"][1]["messages"]
    p = subprocess.run([os.path.join(BIN, "run"), models["qwen2"], "--chat", "--tokenize"],
                       input=(msgs[0]["content"] + "\n").encode(), capture_output=True)
    check(ids_of(p.returncode, p.stdout.decode()) == cases["bpe"][1]["ids"],
          "qwen2: without -p and with stdin not a terminal, stdin is the user message")

# ---------------------------------------------------------------------------
# 2. Real templates of every family, detected from a copy of a fixture folder.
MISTRAL_V1 = (  # mistralai/Mistral-7B-Instruct-v0.1 (and v0.2), as updated in 2024
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n{%- endfor %}\n")
MISTRAL_V3 = (  # mistralai/Mistral-7B-Instruct-v0.3, its tool-call branches left out
    "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n"
    "{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    "            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n"
    "        {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n"
    "    {%- elif message[\"role\"] == \"assistant\" %}\n            {{- \" \" + message[\"content\"]|trim + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n"
    "    {%- endif %}\n{%- endfor %}\n")
LLAMA3 = (  # meta-llama/Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA31 = (  # meta-llama/Llama-3.1-8B-Instruct, its tool branches left out
    "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n"
    "{%- for message in messages %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")
DEEPSEEK = (  # deepseek-ai/deepseek-llm-7b-chat
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
QWEN25 = (  # Qwen/Qwen2.5-0.5B-Instruct, its tool branches shortened
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
CHATML = (  # plain ChatML (e.g. HuggingFaceTB/SmolLM2-*-Instruct): no default system message
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
GEMMA = (  # google/gemma-2b-it: a family we do not know
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim "
    "+ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

SYS, U1, A1, U2 = "You are terse.", "Hi there!", "Hello.", "What is 2+2?"
FULL = [{"role": "system", "content": SYS}, {"role": "user", "content": U1},
        {"role": "assistant", "content": A1}, {"role": "user", "content": U2}]
SHORT = [{"role": "user", "content": U1}]
# (name, template, fixture whose vocabulary it runs on, messages, the rendering
# with bos/eos the fixture's pieces). The llama fixture: bos <s>, eos </s>.
TEMPLATES = [
    ("mistral v0.1", MISTRAL_V1, "llama", FULL,
     f"<s> [INST] {SYS}\n\n{U1} [/INST] {A1}</s> [INST] {U2} [/INST]"),
    ("mistral v0.3", MISTRAL_V3, "llama", FULL,
     f"<s>[INST] {U1}[/INST] {A1}</s>[INST] {SYS}\n\n{U2}[/INST]"),
    ("llama3", LLAMA3, "llama", FULL,
     f"<s><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
     f"{U1}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|><|start_header_id|>user"
     f"<|end_header_id|>\n\n{U2}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("llama3.1", LLAMA31, "llama", SHORT,
     "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
     f"<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("deepseek", DEEPSEEK, "llama", FULL,
     f"<s>{SYS}\n\nUser: {U1}\n\nAssistant: {A1}</s>User: {U2}\n\nAssistant:"),
    ("qwen2.5", QWEN25, "qwen2", SHORT,
     "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
     f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml", CHATML, "qwen2", SHORT, f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"),
]

try:
    import jinja2
except ImportError:
    jinja2 = None


def jinja_render(template, messages, bos, eos):
    """What transformers' apply_chat_template renders (its Jinja settings)."""
    def raise_exception(msg):
        raise ValueError(msg)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True)


def folder_with_template(fixture, tag, template):
    """A copy of a fixture folder (weights linked) whose tokenizer_config.json has another chat template."""
    src, dst = os.path.join(HF, fixture), os.path.join(TMP, f"chat_tpl_{tag}")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for f in os.listdir(src):
        if f != "tokenizer_config.json":
            os.symlink(os.path.abspath(os.path.join(src, f)), os.path.join(dst, f))
    cfg = json.load(open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8"))
    if template is None:
        cfg.pop("chat_template", None)
    else:
        cfg["chat_template"] = template
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False)
    return dst


def plain_tokenize(model, text, fixture):
    """The ids of text tokenized as a prompt (special tokens parsed); the llama fixture adds BOS itself."""
    if fixture == "llama":
        assert text.startswith("<s>")
        text = text[3:]
    path = os.path.join(TMP, "chat_expected.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    return ids_of(*run(model, "-f", path, "--tokenize")[:2])


for name, template, fixture, msgs, expected in TEMPLATES:
    if jinja2 is not None:
        bos, eos = ("<s>", "</s>") if fixture == "llama" else ("", "<|im_end|>")
        rendered = jinja_render(template, msgs, bos, eos)
        check(rendered == expected, f"{name}: the expected rendering is what jinja2 renders from the template"
              + ("" if rendered == expected else f": {rendered!r}"))
    tag = re.sub(r"[^a-z0-9]", "_", name)
    model = os.path.join(TMP, f"chat_tpl_{tag}.bin")
    ok, err = export(folder_with_template(fixture, tag, template), model)
    if not ok:
        check(False, f"{name}: ./export of a fixture with the template: {err.strip()[-300:]}")
        continue
    got, err = chat_tokenize(model, msgs)
    want = plain_tokenize(model, expected, fixture)
    check(got is not None and got == want, f"{name}: detected, and --chat --tokenize renders {expected[:50]!r}..."
          + ("" if got == want else f" (got {got and got[:20]}, want {want and want[:20]}; {err.strip()[:200]})"))

# --chat-template overrides detection (qwen2 has no BOS: bos_token is empty).
if models["qwen2"]:
    got, err = chat_tokenize(models["qwen2"], FULL, "--chat-template", "llama2")
    want = plain_tokenize(models["qwen2"], f"[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\n{U1} [/INST] {A1} <|im_end|>"
                          f"[INST] {U2} [/INST]", "qwen2")
    check(got == want, "--chat-template llama2 overrides the detected ChatML")

# ---------------------------------------------------------------------------
# 3. Generation, --json, errors.
for name in ("qwen2", "llama"):
    if not models[name]:
        continue
    rc, out, err = run(models[name], "--chat", "-p", "hi", "-n", "5", "-t", "0")
    m = re.search(r"generated: (\d+) tokens", err)
    check(rc == 0 and m and out.endswith("\n"), f"{name}: --chat -p hi -n 5 -t 0 answers ({m and m.group(1)} tokens: {out!r})"
          + ("" if rc == 0 else f": {err.strip()[-200:]}"))
    rc, out, err = run(models[name], "--chat", "-p", "hi", "-n", "5", "-t", "0", "--json")
    try:
        obj = json.loads(out.strip().split("\n")[-1])
    except ValueError:
        obj = None
    want_ids, _ = chat_tokenize(models[name], [{"role": "user", "content": "hi"}])
    ok = (rc == 0 and obj is not None and set(obj) >= {"text", "ids", "prompt_tokens", "generated_tokens", "prefill_tok_s",
          "decode_tok_s"} and obj["prompt_tokens"] == len(want_ids or []) and len(obj["ids"]) == obj["generated_tokens"] <= 5)
    check(ok, f"{name}: --chat --json prints the turn's object (prompt_tokens = the rendered conversation's "
          f"{len(want_ids or [])} tokens)" + ("" if ok else f": {out.strip()[-200:]} {err.strip()[-200:]}"))

# A model without a chat template; one whose template is of no known family.
bad = os.path.join(TMP, "chat_bad.json")
with open(bad, "w") as f:
    f.write('[{"role": "user", "content": "hi"},')
errors = [
    ("--chat-template bogus", [models["qwen2"], "--chat", "--chat-template", "bogus", "-p", "hi"], "bogus"),
    ("--system without --chat", [models["qwen2"], "--system", "x", "-p", "hi"], "--chat"),
    ("malformed history file", [models["qwen2"], "--chat", "--chat-history", bad, "-p", "hi"], "chat history"),
    ("history not an array", [models["qwen2"], "--chat", "--chat-history", history_file({"role": "user"}, "h2.json"), "-p", "hi"], "array"),
    ("missing history file", [models["qwen2"], "--chat", "--chat-history", os.path.join(TMP, "nope.json"), "-p", "hi"], "nope.json"),
    ("message without content", [models["qwen2"], "--chat", "--chat-history", history_file([{"role": "user"}], "h3.json"), "-p", "hi"], "content"),
    ("unknown role", [models["qwen2"], "--chat", "--chat-history", history_file([{"role": "tool", "content": "x"}], "h4.json"), "-p", "hi"], "tool"),
    ("a role with a newline and an escape sequence", [models["qwen2"], "--chat", "--chat-history",
     history_file([{"role": "us\ner\u001b[2J", "content": "x"}], "h4b.json"), "-p", "hi"], "us\\ner\\x1b[2J"),
    ("assistant first", [models["qwen2"], "--chat", "--chat-history", history_file([{"role": "assistant", "content": "x"}], "h5.json"), "-p", "hi"], "role"),
    ("two user messages in a row", [models["qwen2"], "--chat", "--chat-history", history_file([{"role": "user", "content": "x"}], "h6.json"), "-p", "hi", "-n", "1"], "role"),
    ("system message late", [models["qwen2"], "--chat", "--chat-history", history_file([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "h7.json"), "-p", "hi"], "system"),
    ("system twice", [models["qwen2"], "--chat", "--system", "a", "--chat-history", history_file([{"role": "system", "content": "x"}], "h8.json"), "-p", "hi"], "system"),
    ("nothing to answer", [models["qwen2"], "--chat", "--tokenize", "--chat-history", history_file(SHORT + [{"role": "assistant", "content": "x"}], "h9.json")], "user message"),
    ("--chat with --ppl", [models["qwen2"], "--chat", "--ppl", "-p", "hi"], "--ppl"),
]
for name, args, word in errors:
    if not args[0]:
        continue
    rc, out, err = run(*args)
    check(one_error_line(rc, err) and word in err, f"{name}: one error line, status 1 ({err.strip()[:160]})")

if models["llama"]:
    ok, err = export(folder_with_template("llama", "none", None), os.path.join(TMP, "chat_tpl_none.bin"))
    rc, out, err = run(os.path.join(TMP, "chat_tpl_none.bin"), "--chat", "-p", "hi")
    check(one_error_line(rc, err) and "no chat template" in err and "--chat-template" in err,
          f"model without a chat template: names the problem and --chat-template ({err.strip()[:200]})")
    rc, out, err = run(os.path.join(TMP, "chat_tpl_none.bin"), "--chat", "--chat-template", "llama2", "-p", "hi", "-n", "3", "-t", "0")
    check(rc == 0, "model without a chat template: --chat-template llama2 answers")
    ok, err = export(folder_with_template("llama", "gemma", GEMMA), os.path.join(TMP, "chat_tpl_gemma.bin"))
    rc, out, err = run(os.path.join(TMP, "chat_tpl_gemma.bin"), "--chat", "-p", "hi")
    check(one_error_line(rc, err) and "--chat-template" in err,
          f"template of an unknown family (Gemma): names the problem and --chat-template ({err.strip()[:200]})")

stories, tok = os.path.join(ASSETS, "llama2c", "stories260K.bin"), os.path.join(ASSETS, "llama2c", "tok512.bin")
if have([stories, tok], "llama2.c checks"):
    rc, out, err = run(stories, "-z", tok, "--chat", "-p", "hi")
    check(one_error_line(rc, err) and "--chat-template" in err,
          f"llama2.c stories260K (no template): names the problem and --chat-template ({err.strip()[:200]})")
    rc, out, err = run(stories, "-z", tok, "--chat", "--chat-template", "llama2", "-p", "hi", "--tokenize")
    check(rc == 0 and (ids_of(rc, out) or [0])[0] == 1 and ids_of(rc, out).count(1) == 1,
          f"llama2.c stories260K --chat-template llama2: BOS once, from the rendering ({out.strip()[:80]})")

# ---------------------------------------------------------------------------
# 4. A terminal session: two turns, the KV cache kept between them.
CTRL_C, CTRL_D = b"\x03", b"\x04"
PROMPT = rb"(?:^|\n)> "  # the prompt starts a line: "> " inside an answer does not count


class Terminal:
    """./run in a pseudo-terminal, driven as a user at a terminal drives it: what is typed goes through the
    terminal's line discipline, which echoes it, ends the input on Ctrl-D at the start of a line and turns
    Ctrl-C into SIGINT for the process. Nothing here waits for a time to pass: expect() waits for output."""

    def __init__(self, args):
        import pty
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                # As a shell does for a job in the foreground: SIGINT as the default, even where the tests run
                # with it ignored (in the background, without job control), which ./run would respect.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execv(os.path.join(BIN, "run"), [os.path.join(BIN, "run"), *args])
            finally:
                os._exit(127)
        self.out, self.seen, self.closed, self.status = b"", 0, False, None

    def _read(self, wait):
        r, _, _ = select.select([self.fd], [], [], wait)
        if not r:
            return
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the process has closed the terminal
            data = b""
        self.closed = not data
        self.out += data

    def expect(self, pattern, timeout=60):
        """Reads until pattern (a bytes regex) matches the output after the previous match: the match, or
        None when the process closed the terminal first or timeout seconds passed."""
        regex, deadline = re.compile(pattern, re.S), time.time() + timeout
        while True:
            m = regex.search(self.out, self.seen)
            if m:
                self.seen = m.end()
                return m
            if self.closed or time.time() > deadline:
                return None
            self._read(0.5)

    def type(self, keys):
        os.write(self.fd, keys)

    def alive(self):
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = status
        return pid == 0

    def end(self, timeout=60):
        """Waits for the process to end, killing it after timeout: its exit status, or None if a signal ended it."""
        deadline = time.time() + timeout
        while not self.closed and time.time() < deadline:
            self._read(0.5)
        if self.status is None:
            if not self.closed:
                os.kill(self.pid, 9)
            _, self.status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    def text(self):
        return self.out.decode("utf-8", "replace").replace("\r\n", "\n")


def pty_session(args, lines, timeout=60):
    """Answers each prompt with the next line, then ends the input with Ctrl-D. Returns (exit status, output)."""
    term = Terminal(args)
    for line in [*lines, None]:
        if not term.expect(PROMPT, timeout):
            break
        term.type(CTRL_D if line is None else line.encode() + b"\n")
    return term.end(timeout), term.text()


if models["qwen2"]:
    model = models["qwen2"]
    status, out = pty_session([model, "--chat", "-n", "4", "-t", "0", "--verbose", "--ctx", "256"], [U1, U2])
    turns = [(int(a), int(b)) for a, b in re.findall(r"chat: turn \d+ feeds (\d+) new tokens after (\d+) in the cache", out)]
    gens = [int(g) for g in re.findall(r"generated: (\d+) tokens", out)]
    first, _ = chat_tokenize(model, [{"role": "user", "content": U1}])
    # After the answer: the end-of-turn token (sampled, or written out when -n cut the answer, after its last token),
    # then the next user message and the generation prompt.
    cont = plain_tokenize(model, f"<|im_end|>\n<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n", "qwen2")
    ok = status == 0 and len(turns) == 2 and len(gens) == 2
    if ok:
        cut = gens[0] == 4  # ended by -n: the last token was printed but not fed
        ok = (turns[0] == (len(first), 0) and turns[1][1] == len(first) + gens[0] - cut
              and turns[1][0] == len(cont) + cut)
    check(ok, f"terminal session, two turns: the second feeds only its new tokens (turns {turns}, generated {gens}, "
          f"first turn {first and len(first)} tokens, continuation {cont and len(cont)})" + ("" if ok else f": {out[-400:]!r}"))
    # A context that fills up ends the session with a clear message.
    status, out = pty_session([model, "--chat", "-n", "8", "-t", "0", "--ctx", "40"], [U1, U2, U2])
    ok = status == 0 and "context" in out and "full" in out
    check(ok, "terminal session with a small --ctx: says the context is full and ends" + ("" if ok else f": {out[-300:]!r}"))

# ---------------------------------------------------------------------------
# 5. Ctrl-C, Ctrl-D and empty lines at the terminal, with the shipped model (it has no chat template of its own).
# With --ignore-eos, -n 100000 and a context of 4096 an answer goes on until the context is full, far longer
# than it takes to see its first bytes and type Ctrl-C; an answer that ran to its end fails the check.
READER = "models/reader.bin"
U3 = "What did the owl say?"
CHAT = [READER, "--chat", "--chat-template", "llama2", "-t", "0", "--threads", "1", "--verbose"]
LONG = ["-n", "100000", "--ignore-eos", "--ctx", "4096"]
TURN = rb"chat: turn %d feeds (\d+) new tokens after (\d+) in the cache[^\n]*\n"
STOPPED = rb"\nprompt: (\d+) tokens[^\n]*\| generated: (\d+) tokens[^\n]*\| stopped: ([^\r\n]*)(?=\r?\n)"


def reader_tokens(text):
    """The ids of text after the model's BOS, tokenized as a prompt (special tokens parsed)."""
    path = os.path.join(TMP, "chat_reader.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    ids = ids_of(*run(READER, "-f", path, "--tokenize")[:2]) or []
    return ids[1:] if ids[:1] == [1] else None


if have([READER], "terminal checks with the shipped model"):
    # An empty line, then two answers stopped by Ctrl-C, then Ctrl-D.
    term = Terminal(CHAT + LONG)
    steps = {}
    if term.expect(PROMPT):
        term.type(b"\n")
        steps["empty line: the prompt again"] = term.expect(rb"\n> ") is not None
        term.type(U1.encode() + b"\n")
        turn1 = term.expect(TURN % 1)
        # The empty line added nothing: the first turn is the rendering of U1 alone (Llama 2's template).
        steps["empty line: the first turn is the next line alone"] = (
            turn1 is not None and int(turn1[2]) == 0 and int(turn1[1]) == len(reader_tokens(f"<s>[INST] {U1} [/INST]") or []))
        steps["first answer: text appears"] = turn1 is not None and term.expect(rb".") is not None
        term.type(CTRL_C)
        stop1 = term.expect(STOPPED)
        steps["Ctrl-C: the answer stops on a line of its own, 'stopped: interrupted (Ctrl-C)'"] = (
            stop1 is not None and stop1[3] == b"interrupted (Ctrl-C)")
        steps["Ctrl-C: the prompt comes back, the process lives"] = term.expect(PROMPT) is not None and term.alive()
        term.type(U2.encode() + b"\n")
        turn2 = term.expect(TURN % 2)
        # The cache holds the first turn and every token of the stopped answer (all of them were fed), and the
        # second turn feeds only the end of the answer, the user message and the generation prompt.
        steps["next turn: the stopped answer is in the cache, only the new tokens are fed"] = (
            turn1 is not None and stop1 is not None and turn2 is not None
            and int(turn2[2]) == int(turn1[1]) + int(stop1[2])
            and int(turn2[1]) == len(reader_tokens(f"</s><s>[INST] {U2} [/INST]") or []))
        steps["second answer: text appears"] = turn2 is not None and term.expect(rb".") is not None
        term.type(CTRL_C)
        stop2 = term.expect(STOPPED)
        steps["second Ctrl-C: that answer stops too, the prompt comes back"] = (
            stop2 is not None and stop2[3] == b"interrupted (Ctrl-C)" and term.expect(PROMPT) is not None)
        term.type(CTRL_D)
        steps["Ctrl-D: says the input ended"] = term.expect(rb"\nchat: end of input; the conversation ends\r?\n") is not None
    status = term.end()
    steps["Ctrl-D: exit status 0"] = status == 0
    for name, ok in steps.items():
        check(ok, f"terminal chat: {name}" + ("" if ok else f" (status {status}): {term.text()[-500:]!r}"))

    # Ctrl-C at the prompt, after an answer and before the first one, ends the chat with status 0.
    for name, lines in (("after an answer", [U1]), ("before the first message", [])):
        term = Terminal(CHAT + ["-n", "3"])
        for line in lines:
            term.expect(PROMPT)
            term.type(line.encode() + b"\n")
            term.expect(STOPPED)
        ok = term.expect(PROMPT) is not None
        term.type(CTRL_C)
        ok = ok and term.expect(rb"\nchat: interrupted; the conversation ends\r?\n") is not None
        status = term.end()
        check(ok and status == 0, f"terminal chat: Ctrl-C at the prompt {name} ends the chat, says so, status 0 "
              f"(status {status})" + ("" if ok else f": {term.text()[-300:]!r}"))

    # Ctrl-D at the first prompt; an empty line and then Ctrl-D.
    for name, keys in (("Ctrl-D at the first prompt", CTRL_D), ("an empty line, then Ctrl-D", b"\n" + CTRL_D)):
        term = Terminal(CHAT)
        ok = term.expect(PROMPT) is not None
        term.type(keys)
        ok = ok and term.expect(rb"\nchat: end of input; the conversation ends\r?\n") is not None
        status = term.end()
        ok = ok and status == 0 and "chat: turn" not in term.text()
        check(ok, f"terminal chat: {name} ends it cleanly, says so, status 0, nothing generated (status {status})"
              + ("" if ok else f": {term.text()[-300:]!r}"))

    # --json: the stopped answer's object says why it ended.
    term = Terminal(CHAT + LONG + ["--json"])
    term.expect(PROMPT)
    term.type(U3.encode() + b"\n")
    term.expect(TURN % 1)
    term.type(CTRL_C)
    obj = term.expect(rb"(\{\"text\"[^\n]*\})\r?\n")
    try:
        obj = json.loads(obj[1]) if obj else None
    except ValueError:
        obj = None
    ok = obj is not None and obj.get("finish_reason") == "interrupted" and len(obj["ids"]) == obj["generated_tokens"]
    ok = ok and term.expect(PROMPT) is not None
    term.type(CTRL_D)
    status = term.end()
    check(ok and status == 0, f"terminal chat --json: Ctrl-C gives \"finish_reason\": \"interrupted\" (status {status})"
          + ("" if ok else f": {term.text()[-300:]!r}"))

    # Anywhere else Ctrl-C keeps its default action: generation in a terminal, a one-turn chat without one.
    term = Terminal([READER, "-p", "Once", "-t", "0", "--threads", "1"] + LONG)
    ok = term.expect(rb".") is not None
    term.type(CTRL_C)
    term.end()
    ok = ok and os.WIFSIGNALED(term.status) and os.WTERMSIG(term.status) == signal.SIGINT
    check(ok, "generation in a terminal: Ctrl-C ends ./run as SIGINT's default action does"
          + ("" if ok else f" (wait status {term.status}): {term.text()[-300:]!r}"))
    p = subprocess.Popen([os.path.join(BIN, "run"), *CHAT, *LONG, "-p", U1], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ok = len(p.stdout.read(1)) == 1  # the answer has begun
    p.send_signal(signal.SIGINT)
    p.stdout.read()
    ok = ok and p.wait() == -signal.SIGINT
    check(ok, f"one-turn --chat, stdin not a terminal: SIGINT ends ./run as its default action does (status {p.returncode})")

finish()
