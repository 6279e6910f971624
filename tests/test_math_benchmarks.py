"""The hub math benchmarks (from small local files in the real schemas) and CHAMP (offline)."""

import json
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from ttscale.benchmarks._common import DEFAULT_MATH_TEMPLATE
from ttscale.benchmarks.aime24 import Aime24Benchmark
from ttscale.benchmarks.champ import ChampBenchmark, champ_gold
from ttscale.benchmarks.gsm8k import Gsm8kBenchmark, gold_answer
from ttscale.benchmarks.hub import load_rows
from ttscale.benchmarks.math500 import Math500Benchmark
from ttscale.errors import ConfigError
from ttscale.protocols import Benchmark
from ttscale.testing import free_port  # a free port is closed: connections to it are refused

FIXTURES = Path(__file__).parent / "fixtures"
HUB = [
    (Gsm8kBenchmark, "gsm8k", "openai/gsm8k"),
    (Math500Benchmark, "math500", "HuggingFaceH4/MATH-500"),
    (Aime24Benchmark, "aime24", "HuggingFaceH4/aime_2024"),
]


def fixture_benchmark(make, fixture, **options):
    return make(data_file=FIXTURES / f"{fixture}.jsonl", **options)


def boxed(answer: str) -> str:
    return f"Let me work through it step by step.\n\nSo the final answer is $\\boxed{{{answer}}}$."


@pytest.mark.parametrize("make, fixture, dataset", HUB)
def test_hub_benchmark_loads_its_fixture(make, fixture, dataset):
    benchmark = fixture_benchmark(make, fixture)
    problems = benchmark.load()
    rows = (FIXTURES / f"{fixture}.jsonl").read_text().splitlines()
    assert len(problems) == len(rows) >= 3
    assert isinstance(benchmark, Benchmark) and benchmark.name == fixture and make.dataset == dataset
    assert len({p.id for p in problems}) == len(problems) and all(p.id.startswith(f"{fixture}-") for p in problems)
    assert [p.id for p in fixture_benchmark(make, fixture).load()] == [p.id for p in problems]  # stable
    for p in problems:
        assert p.prompt[-1].content == DEFAULT_MATH_TEMPLATE.replace("{question}", p.question)
        assert p.answer and p.question


@pytest.mark.parametrize("make, fixture, dataset", HUB)
def test_gold_round_trips_through_boxed_and_wrong_answers_fail(make, fixture, dataset):
    benchmark = fixture_benchmark(make, fixture)
    for p in benchmark.load():
        assert benchmark.grade(p, benchmark.extract_answer(boxed(p.answer))).correct, p.answer
        assert not benchmark.grade(p, benchmark.extract_answer(boxed("-7/13"))).correct, p.answer
        assert not benchmark.grade(p, None).correct


@pytest.mark.parametrize("make, fixture, dataset", HUB)
def test_no_gold_or_solution_in_metadata(make, fixture, dataset):
    # Strategies see metadata; gold answers, solutions and solution links must stay out of it.
    for p in fixture_benchmark(make, fixture).load():
        assert not {"answer", "solution", "url"} & set(p.metadata)
        assert all(str(value) != p.answer for value in p.metadata.values())
        assert p.blind().answer is None


def test_gsm8k_gold_is_the_number_after_the_hashes():
    problems = fixture_benchmark(Gsm8kBenchmark, "gsm8k").load()
    assert [p.answer for p in problems] == ["18", "3", "70000", "1080"]  # "#### 1,080" loses its comma
    assert [p.id for p in problems] == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"]
    assert gold_answer("a\nb\n#### -1,234.5") == "-1234.5"
    assert [p.difficulty for p in problems] == [2.0, 2.0, 4.0, 1.0]  # solution steps
    benchmark = Gsm8kBenchmark()
    assert benchmark.grade(problems[0], benchmark.extract_answer("She makes $18 every day.\n#### 18")).correct
    assert benchmark.grade(problems[3], benchmark.extract_answer("\\boxed{1,080}")).correct


def test_math500_difficulty_is_the_level_and_ids_come_from_unique_id():
    problems = fixture_benchmark(Math500Benchmark, "math500").load()
    assert [p.difficulty for p in problems] == [2.0, 5.0, 3.0, 3.0, 4.0]
    assert problems[0].id == "math500-test/precalculus/807"
    assert problems[0].metadata == {"subject": "Precalculus", "level": 2}
    benchmark = Math500Benchmark()
    polar, _, fraction, _, domain = problems
    assert benchmark.grade(polar, "(3, \\frac{\\pi}{2})").correct
    assert not benchmark.grade(polar, "(3, \\pi)").correct
    assert benchmark.grade(fraction, "\\dfrac{14}{3}").correct
    assert benchmark.grade(domain, "(2, 12) \\cup (12, 102)").correct
    assert not benchmark.grade(domain, "[2, 12) \\cup (12, 102)").correct


def test_math500_accepts_level_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    row = {"problem": "1+1?", "answer": "2", "level": "Level 4", "subject": "Algebra", "unique_id": "test/algebra/1.json"}
    path.write_text(json.dumps(row) + "\n")
    assert Math500Benchmark(data_file=path).load()[0].difficulty == 4.0


def test_aime24_ids_answers_and_difficulty():
    problems = fixture_benchmark(Aime24Benchmark, "aime24").load()
    assert [p.id for p in problems] == ["aime24-60", "aime24-61", "aime24-62"]
    assert [p.answer for p in problems] == ["204", "25", "809"]
    assert [p.difficulty for p in problems] == [1.0, 2.0, 3.0]  # the problem number within the exam
    assert Aime24Benchmark().grade(problems[1], "025").correct  # AIME answers are written with 3 digits


def test_aime24_integer_answers_from_other_copies(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"id": 7, "problem": "p", "answer": 33}) + "\n" + json.dumps({"id": 8, "problem": "q", "answer": "033"}) + "\n")
    assert [(p.id, p.answer, p.difficulty) for p in Aime24Benchmark(data_file=path).load()] == [
        ("aime24-7", "33", None), ("aime24-8", "33", None),
    ]


@pytest.mark.parametrize("make, fixture, dataset", HUB)
def test_size_limit_and_template_options(make, fixture, dataset):
    all_ids = [p.id for p in fixture_benchmark(make, fixture).load()]
    assert [p.id for p in fixture_benchmark(make, fixture, size=2).load()] == all_ids[:2]
    assert [p.id for p in fixture_benchmark(make, fixture).load(limit=1)] == all_ids[:1]
    assert fixture_benchmark(make, fixture).load(limit=0) == []
    custom = fixture_benchmark(make, fixture, prompt_template="Q: {question}\nA:").load(limit=1)[0]
    assert custom.prompt[0].content == f"Q: {custom.question}\nA:"
    with pytest.raises(ValidationError, match="prompt_template"):
        make(prompt_template="no placeholder")
    with pytest.raises(ValidationError, match="datafile"):
        make(datafile="x.jsonl")
    with pytest.raises(ValidationError, match="size"):
        make(size=0)


def test_json_and_parquet_copies_load(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    as_json = tmp_path / "gsm8k.json"
    as_json.write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_parquet = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), as_parquet)
    expected = [(p.id, p.answer) for p in fixture_benchmark(Gsm8kBenchmark, "gsm8k").load()]
    for path in (as_json, as_parquet):
        assert [(p.id, p.answer) for p in Gsm8kBenchmark(data_file=path).load()] == expected


def test_bad_data_files_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*data_file"):
        Gsm8kBenchmark(data_file=tmp_path / "missing.jsonl").load()
    wrong_schema = tmp_path / "wrong.jsonl"
    wrong_schema.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ConfigError, match="no 'question' field.*openai/gsm8k"):
        Gsm8kBenchmark(data_file=wrong_schema).load()
    no_hashes = tmp_path / "no_hashes.jsonl"
    no_hashes.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ConfigError, match="####"):
        Gsm8kBenchmark(data_file=no_hashes).load()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n{not json\n")
    with pytest.raises(ConfigError, match=r"broken.jsonl:2: not valid JSON"):
        Math500Benchmark(data_file=broken).load()
    for name, lines in (("latin1.jsonl", b'{"problem": "p", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n'),
                        ("latin1.json", b'[{"problem": "p", "answer": "1"},\n {"problem": "caf\xe9", "answer": "2"}]\n')):
        (tmp_path / name).write_bytes(lines)
        with pytest.raises(ConfigError, match=rf"{name}:2: not UTF-8 \(byte 0xe9 at column \d+\)"):
            Math500Benchmark(data_file=tmp_path / name).load()
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(ConfigError, match="expected .jsonl"):
        load_rows("x/y", None, "test", tmp_path / "rows.csv")
    duplicate = tmp_path / "dup.jsonl"
    row = json.dumps({"id": 1, "problem": "p", "answer": "1"})
    duplicate.write_text(row + "\n" + row + "\n")
    with pytest.raises(ConfigError, match="appears twice"):
        Aime24Benchmark(data_file=duplicate).load()


@pytest.mark.parametrize("endpoint", ["https://hub.invalid", f"http://127.0.0.1:{free_port()}"])
@pytest.mark.parametrize("make, fixture, dataset", HUB)
def test_hub_without_network_fails_fast_with_a_hint(monkeypatch, make, fixture, dataset, endpoint):
    # The real code path, with the hub unreachable (".invalid" never resolves; a closed port
    # refuses). It must not hang in datasets' retries: we bound the wait so a hang fails the
    # test instead of stalling the suite.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    outcome = []

    def attempt():
        try:
            make().load()
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)
    assert outcome, f"loading {dataset} without a network did not finish in 30 s"
    error = outcome[0]
    assert isinstance(error, ConfigError), repr(error)
    assert dataset in str(error) and "data_file=PATH" in str(error) and "--data-file" in str(error)


def test_champ_loads_offline_and_leaves_out_free_text():
    benchmark = ChampBenchmark()
    problems = benchmark.load()
    kinds = [p.metadata["answer_kind"] for p in problems]
    # 270 problems: 205 with a math answer, 33 yes/no, 32 free text ("No integer solutions").
    assert (kinds.count("math"), kinds.count("yes-no"), len(problems)) == (205, 33, 238)
    assert len({p.id for p in problems}) == len(problems)
    assert problems[0].id == "champ-P_Combinatorics_1" and problems[0].answer == "239"
    assert {p.metadata["category"] for p in problems} == {"Combinatorics", "Inequality", "Number-Theory", "Polynomial", "Sequence"}
    assert all(p.difficulty is None and set(p.metadata) == {"category", "answer_kind"} for p in problems)
    assert isinstance(benchmark, Benchmark) and benchmark.name == "champ"
    assert len(ChampBenchmark(include_yes_no=False).load()) == 205
    assert [p.id for p in benchmark.load(limit=5)] == [p.id for p in problems[:5]]
    assert [p.id for p in ChampBenchmark(size=3).load()] == [p.id for p in problems[:3]]


def test_champ_gold_answers_grade_correct_against_themselves():
    benchmark = ChampBenchmark()
    for p in benchmark.load():
        assert benchmark.grade(p, p.answer).correct, p.answer
        assert benchmark.grade(p, benchmark.extract_answer(boxed(p.answer))).correct, p.answer
        if p.metadata["answer_kind"] == "math":
            assert not benchmark.grade(p, "-7/13").correct, p.answer
        else:
            opposite = {"Yes": "\\text{No}", "No": "\\text{Yes}"}[p.answer]
            assert benchmark.grade(p, f"\\text{{{p.answer}}}").correct
            assert not benchmark.grade(p, opposite).correct


@pytest.mark.parametrize(
    "raw, gold, model_answer",
    [
        ("C(10, 5), or equivalently 252", "252", "\\binom{10}{5}"),
        ("5/14, or approximately 35.7%", "5/14", "\\frac{5}{14}"),
        ("0 is the only possible value", "0", "0"),
        ("100 (i.e., all values)", "100", "100"),
        ("The limit exists and is equal to (1+sqrt(4a+1))/2", "(1+\\sqrt{4a+1})/2", "\\frac{1+\\sqrt{1+4a}}{2}"),
        ("2^(n-1)", "2^{n-1}", "2^{n-1}"),
        ("376 and 625", "376, 625", "625, 376"),
        ("x=0, y=2 and x=9, y=11", "(x=0, y=2), (x=9, y=11)", "(9, 11), (0, 2)"),
        ("x=±1", "x=\\pm 1", "x = 1, x = -1"),
        ("sqrt(3)/3, or equivalently 1/sqrt(3)", "1/\\sqrt{3}", "\\frac{\\sqrt{3}}{3}"),
        ("At least 1 number", "1", "1"),
        ("2^floor(n/2)*floor(n/2)!", "2^{\\lfloor n/2\\rfloor } \\cdot \\lfloor n/2\\rfloor !", "2^{\\lfloor n/2 \\rfloor} \\lfloor n/2 \\rfloor!"),
    ],
)
def test_champ_answer_phrases_become_gradable_gold(raw, gold, model_answer):
    assert champ_gold(raw) == (gold, "math")
    from ttscale.grading.math_answer import DEFAULT_VERIFIER

    assert DEFAULT_VERIFIER.equivalent(gold, model_answer)


@pytest.mark.parametrize(
    "raw", ["No integer solutions", "The limit does not exist", "f(x)=0 or f(x)=1", "x(n)<y(n-1) for all n≥3",
            "x(x-1)(x-2)...(x-2022)", "a(1±sqrt(2)), a(1±sqrt(5))/2", "Exactly one"],
)
def test_champ_free_text_answers_are_left_out(raw):
    assert champ_gold(raw) is None
