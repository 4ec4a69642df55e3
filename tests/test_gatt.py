"""Ghost Attention data: the instruction only in the first turn, the loss zeroed on exactly the earlier
turns, answers sampled with the instruction in every turn and kept only when they adhere."""

from camelid.chat_format import encode_dialog_with_mask
from camelid.data.gatt import gatt_sample
from camelid.tasks import INSTRUCTIONS, judge_adherence, make_instruction_dialogs
from camelid.train.gatt_answers import build_gatt, gatt_answers
from tests.test_sft_data import WordTok


def test_gatt_sample_zeroes_exactly_the_earlier_turns():
    tok = WordTok()
    users, answers = ["one", "two two", "three"], ["A amen", "B B amen", "C amen"]
    ids, mask = gatt_sample(tok, "end with amen", users, answers)
    msgs = [{"role": "system", "content": "end with amen"}]
    for u, a in zip(users, answers):
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    full_ids, full_mask = encode_dialog_with_mask(tok, msgs)
    assert ids == full_ids
    v = tok.vocab
    # the last exchange: <s> [INST] three [/INST] C amen </s>; everything before it is 0
    last = [1, v["[INST]"], v["three"], v["[/INST]"], v["C"], v["amen"], 2]
    assert ids[-len(last):] == last
    assert mask == [0] * (len(ids) - len(last)) + [0, 0, 0, 0, 1, 1, 1]
    assert mask[-len(last):] == full_mask[-len(last):] and sum(full_mask) > sum(mask)
    # the instruction appears once, in the first turn
    assert ids.count(v["<<SYS>>"]) == 1 and ids.index(v["<<SYS>>"]) < ids.index(v["one"])


def test_instructions_apply_and_judge():
    for ins in INSTRUCTIONS:
        assert judge_adherence(ins, ins.apply("nedrag")) == 1.0
        assert judge_adherence(ins, "nedrag") == 0.0
        assert judge_adherence(ins, "") == 0.0


def test_program_answers_adhere_and_dialogs_are_deterministic():
    dialogs = make_instruction_dialogs("train", 12, seed=3, turns=4)
    assert [d.references() for d in dialogs] == [d.references() for d in make_instruction_dialogs("train", 12, 3, 4)]
    answers, stats = gatt_answers(dialogs)
    assert stats == {"sampled": 0, "constructed": 48}
    assert all(judge_adherence(d.instruction, a) for d, turn in zip(dialogs, answers) for a in turn)


def test_sampling_sees_instruction_every_turn_and_keeps_only_adherent():
    dialogs = make_instruction_dialogs("train", 6, seed=0, turns=3)
    calls = []

    def answerer(prompts):
        calls.append(prompts)
        out = []
        for i, msgs in enumerate(prompts):
            d = dialogs[i]
            users = [m["content"] for m in msgs if m["role"] == "user"]
            assert msgs[0] == {"role": "system", "content": d.instruction.text}
            assert all(u.endswith(d.instruction.text) for u in users[1:])  # appended to every later turn
            out.append(d.instruction.apply("sampled") if i % 2 == 0 else "ignores it")
        return out

    answers, stats = gatt_answers(dialogs, answerer)
    assert len(calls) == 3
    assert stats == {"sampled": 9, "constructed": 9}
    for i, (d, turn) in enumerate(zip(dialogs, answers)):
        assert turn == ([d.instruction.apply("sampled")] * 3 if i % 2 == 0 else d.references())


def test_build_gatt_trains_only_the_last_turn():
    tok = WordTok()
    dialogs = make_instruction_dialogs("train", 10, seed=1, turns=5)
    samples, stats = build_gatt(tok, dialogs, min_turn=2, seed=0)
    assert stats["dialogs"] == 10
    for ids, mask in samples:
        n_turns = ids.count(1)  # one BOS per exchange
        assert 2 <= n_turns <= 5
        last_bos = len(ids) - 1 - ids[::-1].index(1)
        assert not any(mask[:last_bos]) and mask[-1] == 1 and ids[-1] == 2
