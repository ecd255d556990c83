import pytest
import torch

from xianliao.model.chatbot import FALLBACK_REPLY, ChatBot
from xianliao.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_keeps_everything(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["format_version"] == 1
    assert ckpt["vocab"][:4] == ["<pad>", "<go>", "<eos>", "<unk>"]
    assert ckpt["tokenizer"]["name"] == "jieba"
    assert "optimizer" not in ckpt  # only the resumable 'last' checkpoint has it
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, {k: v for k, v in ckpt.items() if k != "format_version"})
    again = load_checkpoint(copy)
    assert again["vocab"] == ckpt["vocab"]
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, again["state_dict"][k])
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away
    last = load_checkpoint(tiny_checkpoint.parent / "last.pt")
    assert "optimizer" in last and "resume" in last


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p, good: None, "does not exist"),
        (
            lambda p, good: p.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2]),
            "not a readable",
        ),
        (lambda p, good: p.write_text("hello, I am a text file"), "not a readable"),
        (lambda p, good: torch.save({"weights": torch.zeros(2)}, p), "missing"),
        (lambda p, good: torch.save([1, 2, 3], p), "not a dict"),
    ],
    ids=["missing", "truncated", "text", "foreign-dict", "foreign-list"],
)
def test_bad_files_give_one_line_errors(tmp_path, tiny_checkpoint, make, fragment):
    p = tmp_path / "bad.pt"
    make(p, tiny_checkpoint)
    with pytest.raises(CheckpointError) as err:
        ChatBot.load(p)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and str(p) in msg


def test_wrong_version_and_mismatched_vocab(tmp_path, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "v99.pt")
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["vocab"] = ckpt["vocab"][:-1]
    torch.save(ckpt, tmp_path / "vocab.pt")
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(tmp_path / "vocab.pt")


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a checkpoint can't run code."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format_version": 1, "x": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_tiny_model_answers_what_it_learned(tiny_checkpoint):
    from conftest import TINY_PAIRS

    bot = ChatBot.load(tiny_checkpoint)
    for strategy in ("greedy", "beam"):
        replies = bot.reply_many([q for q, _ in TINY_PAIRS], strategy=strategy)
        assert replies == [a for _, a in TINY_PAIRS], strategy
    assert bot.version.startswith("s") and len(bot.version.split("-")[1]) == 8


@pytest.mark.parametrize(
    "text",
    ["", "   ", "😀😀😀", "啊" * 10000, "<b>粗体</b> *星* _下划线_", "qwzx 嘿嘿 ☃︎", "\x00\n\t"],
)
def test_reply_never_crashes_or_is_empty(tiny_checkpoint, text):
    bot = ChatBot.load(tiny_checkpoint)
    for strategy in ("greedy", "beam", "sample"):
        reply = bot.reply(text, strategy=strategy)
        assert isinstance(reply, str) and reply.strip()
    if not text.strip() or text == "\x00\n\t":
        assert bot.reply(text) == FALLBACK_REPLY


def test_quantized_model_gives_the_same_replies(tiny_checkpoint):
    from conftest import TINY_PAIRS

    bot = ChatBot.load(tiny_checkpoint, quantize=True)
    got = bot.reply_many([q for q, _ in TINY_PAIRS], strategy="greedy")
    same = sum(g == a for g, (_, a) in zip(got, TINY_PAIRS, strict=True))
    assert same >= len(TINY_PAIRS) - 1


def test_a_flipped_weight_is_caught_at_load(tmp_path, tiny_checkpoint):
    import torch

    from xianliao.model.checkpoint import CheckpointError, load_checkpoint

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    assert load_checkpoint(tiny_checkpoint)["weights_digest"] == ckpt["weights_digest"]
    ckpt["state_dict"]["embedding.weight"][3, 5] = 345.95  # as a flipped exponent bit does
    damaged = tmp_path / "damaged.pt"
    torch.save(ckpt, damaged)  # written around save_checkpoint, as a bad disk would
    with pytest.raises(CheckpointError, match="damaged: its weights do not match") as err:
        load_checkpoint(damaged)
    assert "\n" not in str(err.value)


def test_a_checkpoint_records_how_it_is_served(tmp_path, tiny_checkpoint):
    from xianliao.model.checkpoint import export_for_inference

    path = export_for_inference(tiny_checkpoint, tmp_path / "m.pt", serving={"retrieve": 7})
    assert ChatBot.load(path).options.retrieve == 7
    assert ChatBot.load(path, decode_options={"retrieve": 3}).options.retrieve == 3
    assert ChatBot.load(tiny_checkpoint).options.retrieve == 10  # the default
    bad = export_for_inference(tiny_checkpoint, tmp_path / "b.pt", serving={"retrieve": -1})
    with pytest.raises(CheckpointError, match="serving options are invalid"):
        ChatBot.load(bad)


def test_serving_options_of_a_later_release_are_left_out_with_a_warning(
    tmp_path, tiny_checkpoint, caplog
):
    from xianliao.model.checkpoint import export_for_inference

    later = {"retrieve": 7, "warp_drive": 9}
    path = export_for_inference(tiny_checkpoint, tmp_path / "m.pt", serving=later)
    bot = ChatBot.load(path)
    assert bot.options.retrieve == 7 and bot.reply("你好")
    assert "serving options unknown here, left out: warp_drive" in caplog.text
    with pytest.raises(ValueError, match="unknown decoding options: warp_speed"):
        ChatBot.load(path, decode_options={"warp_speed": 1})  # a user's typo is still refused


def test_a_checkpoint_can_keep_fp32_on_cpu_and_the_setting_still_wins(tmp_path, tiny_checkpoint):
    """int8 is the CPU default; a checkpoint whose serving entry says int8 false stays fp32
    (as the quickstart's does), unless the caller (MODEL_QUANTIZE) asks for int8."""
    from xianliao.model.checkpoint import export_for_inference

    def int8(bot: ChatBot) -> bool:
        return "quantized" in type(bot.model.encoder).__module__

    kept = export_for_inference(tiny_checkpoint, tmp_path / "m.pt", serving={"int8": False})
    assert int8(ChatBot.load(tiny_checkpoint)) and not int8(ChatBot.load(kept))
    assert int8(ChatBot.load(kept, quantize=True))
    assert ChatBot.load(kept).options.retrieve == 10  # (not a decoding option)
