"""The precision table: every fact about a numeric precision is written here once, as one row.

Per precision: its name (what manifests, ``--precision`` and ``Runner.manifest.precision`` say) and aliases, how
the engines name the arithmetic they executed (``f32``, ``bf16``, ``int8``: ``Runner.executed_precision``, the
roofline's peak keys) and the type names they report for it (OpenVINO's ``u8``/``i8``), how each engine is told to
run it (OpenVINO's ``INFERENCE_PRECISION_HINT``; the ONNX graph ONNX Runtime and a strongly typed TensorRT build
take), whether it is full or reduced precision and so which fidelity targets apply (full: the FP32 ``atol``;
reduced: map r and the accuracy drop), its default minimum map r, whether it is quantised (needs calibration
images), whether ``edgead compile`` gates it, the CPU flags any one of which makes it run natively fast, and how
much of the model it keeps (ties in ``edgead tune`` go to the higher), and, for a quantised precision, the reduced
float precisions the part left in float may run in (``rest``: an INT8 OpenVINO IR with its float rest in BF16).

Engines are rows of ``edgead.registry``; which precisions an engine runs and builds is written on its row.
``tests/test_registry.py`` checks that no other module decides on a precision or engine name literal. Imports
nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgead.errors import EdgeadError

#: fidelity targets (``edgead.fidelity.Budget``): full precision is held to the FP32 absolute tolerance, reduced
#: precision to the map Pearson r and the accuracy drop
FULL_TARGETS = ("atol",)
REDUCED_TARGETS = ("min_map_r", "max_drop", "max_q1_drop")


@dataclass(frozen=True)
class Precision:
    """One numeric precision: how it is named, executed, judged and when it is worth running."""

    name: str  # manifests, --precision, artifact folders ("fp32")
    executed: str  # how engines name the arithmetic ("f32"): ``Runner.executed_precision``, the roofline's keys
    keeps: int  # how much of the model it keeps: a tie in speed goes to the higher
    aliases: tuple[str, ...] = ()
    spellings: tuple[str, ...] = ()  # type names engines report for it (OpenVINO runtime precisions: "u8")
    reduced: bool = True  # False: full precision, held to the FP32 absolute tolerance
    min_map_r: float | None = None  # default map Pearson target against FP32 (reduced precisions)
    quantized: bool = False  # integer arithmetic: needs calibration images (--calib DIR)
    gated: bool = False  # ``edgead compile`` measures it against FP32 before it moves into place
    openvino_hint: str = ""  # OpenVINO CPU INFERENCE_PRECISION_HINT ("" = OpenVINO does not build it)
    onnx_graph: str = ""  # the ONNX graph ONNX Runtime runs and TensorRT builds strongly typed: "" = the export,
    # "mixed" = FP16 casts with FP32 islands (``export.fp16``), "qdq" = QuantizeLinear/DequantizeLinear pairs
    cpu_flags: tuple[str, ...] | None = ()  # any one makes a CPU run it natively; () = every CPU; None = none
    slow_cpu: str = ""  # why it is no faster than FP32 on a CPU without ``cpu_flags``
    rest: tuple[str, ...] = ()  # reduced float precisions the part a quantised model keeps in float may run in
    # (an engine row's ``rest_hint``: OpenVINO's hint on an INT8 IR), tried by ``edgead tune`` where native

    @property
    def targets(self) -> tuple[str, ...]:
        """The ``Budget`` fields that judge an artifact at this precision."""
        return REDUCED_TARGETS if self.reduced else FULL_TARGETS

    def native_on(self, flags: dict[str, bool]) -> bool:
        """Whether a CPU with ``flags`` (``bench.machine.machine_info()["flags"]``) runs it natively fast."""
        if self.cpu_flags is None:
            return False
        return not self.cpu_flags or any(flags.get(f) for f in self.cpu_flags)


PRECISIONS: dict[str, Precision] = {}


def register(p: Precision) -> Precision:
    for name in (p.name, *p.aliases):
        owner = find(name)
        if owner is not None and owner.name != p.name:
            raise EdgeadError(f"precision name '{name}' is taken by precision '{owner.name}'")
    PRECISIONS[p.name] = p
    return p


def find(name: str) -> Precision | None:
    """The precision called ``name``, one of its aliases, its executed name or an engine's type name for it."""
    key = name.strip().lower()
    for p in PRECISIONS.values():
        if key == p.name or key in p.aliases:
            return p
    for p in PRECISIONS.values():
        if key == p.executed or key in p.spellings:
            return p
    return None


def get(name: str) -> Precision:
    """The precision called ``name`` (or an alias); an error listing the precisions otherwise."""
    found = find(name)
    if found is None:
        raise EdgeadError(f"precision must be one of {', '.join(PRECISIONS)}, found '{name}'")
    return found


def executed(name: str) -> str:
    """The executed spelling of a manifest precision or an engine's type name (``fp32``/``float32`` -> ``f32``,
    ``u8`` -> ``int8``); an unknown name comes back as it is."""
    found = find(name)
    return found.executed if found is not None else name


def full() -> Precision:
    """The full precision every reduced one is measured against."""
    return next(p for p in PRECISIONS.values() if not p.reduced)


def native(flags: dict[str, bool]) -> list[Precision]:
    """The reduced precisions a CPU with ``flags`` runs natively (in the table's order)."""
    return [p for p in PRECISIONS.values() if p.reduced and p.cpu_flags and p.native_on(flags)]


def ladder() -> list[Precision]:
    """Precisions a CPU can run, fastest (least kept) first, full precision last: the default compile's order."""
    return sorted((p for p in PRECISIONS.values() if p.cpu_flags is not None), key=lambda p: p.keeps)


# -- the built-in precisions -------------------------------------------------------------------------------
FP32 = register(Precision(
    name="fp32", executed="f32", keeps=3, aliases=("float32",), spellings=("float32",), reduced=False,
    openvino_hint="f32",
))
FP16 = register(Precision(
    name="fp16", executed="f16", keeps=2, aliases=("float16", "half"), spellings=("float16",), min_map_r=0.999,
    onnx_graph="mixed", cpu_flags=None,
    slow_cpu="FP16 graphs are for GPUs: the CPU provider computes them in FP32",
))
BF16 = register(Precision(
    name="bf16", executed="bf16", keeps=2, aliases=("bfloat16",), spellings=("bfloat16",), min_map_r=0.99,
    gated=True, openvino_hint="bf16", cpu_flags=("avx512_bf16", "amx_bf16"),
    slow_cpu="no BF16 instructions (AVX512_BF16/AMX): OpenVINO runs f32",
))
INT8 = register(Precision(
    name="int8", executed="int8", keeps=1, spellings=("u8", "i8", "uint8_t", "int8_t"), min_map_r=0.99,
    quantized=True, gated=True, openvino_hint="f32",  # the quantised products run in int8, the rest in f32
    onnx_graph="qdq", cpu_flags=("avx512_vnni", "avx_vnni", "amx_int8"),
    slow_cpu="no VNNI/AMX: INT8 runs slower than FP32 on this CPU",
    rest=("bf16",),  # the same IR with what NNCF left in float run in bf16: 1.17x plain int8 (issue 28)
))
