# snapdistill: `make reproduce` runs the main job on the toy world, `make test` the CPU suite.
# Both set themselves up (a virtualenv in .venv) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds the machines carry (see README, "Installing").
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
RUNS ?= runs
PROFILE ?= toy

.PHONY: install test test-kernels spread test-slow reproduce bench bench-runs lint clean

install: $(VENV)/.install-stamp

$(VENV)/.install-stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/pytest -q

# The tests whose numbers depend on the CPU's float kernels (marker `kernels`: the golden tests and the cached-latents
# comparison), rerun with the kernels capped at other instruction sets, as other CPUs run them (tests/isa.sh).
# .ci/run calls it after `make test`, so a tolerance too tight for another CPU fails here first.
KERNEL_ISAS ?= default avx2
test-kernels: install
	for isa in $(KERNEL_ISAS); do tests/isa.sh $$isa $(BIN)/pytest -q -m kernels || exit 1; done

# Measure those tests' spread: every ISA setting at 1 and 2 threads, the largest difference per check beside its
# tolerance (the figures written beside the tolerances in tests/test_golden.py and tests/test_cache_latents.py).
spread: install
	mkdir -p $(RUNS) && rm -f $(RUNS)/spread.jsonl
	for isa in default avx2 avx512; do for threads in 1 2; do \
		SNAPDISTILL_TEST_THREADS=$$threads SNAPDISTILL_SPREAD_LOG=$(RUNS)/spread.jsonl \
		tests/isa.sh $$isa $(BIN)/pytest -q -m kernels -p no:cacheprovider || true; done; done
	$(PY) tests/spread.py $(RUNS)/spread.jsonl

test-slow: install
	$(BIN)/pytest -q -m slow

lint: install
	$(BIN)/ruff check snapdistill tests examples

# ---------------------------------------------------------------------------------------------
# `make reproduce`: the whole pipeline, each stage a file target on its manifest.json, so a rerun
# redoes only what changed. PROFILE=toy (the default) runs on 2 CPU cores in about 19 minutes (20 min 50 s measured
# at 952497f with dmd1 at 400 steps, 372 s of it; at 300 steps, 288 s, an estimated 19 min 26 s); PROFILE=sd15 or sd21 runs the real recipe on GPU
# nodes (see README, "The SD recipe").
# progressive8 is not trained: from a stage-1 student (which takes w) one progressive round 16->8 is the
# direct loss, the same training as direct8; progressive4 is one 8->4 round from direct8's student.
# direct8-base is SnapFusion's route from the base teacher (unguided student, CFG when sampled). The direct
# 16->4 student is a bench row only: reproduce shows 4 steps through progressive4 and keeps its 15 minutes.
R := $(RUNS)/$(PROFILE)
STUDENTS := direct8 progressive4 progressive2 progressive1 direct8-base
BENCH_STUDENTS := $(STUDENTS) direct4 consistency consistency-base dmd1 dmd2 dmd4
# The toy reproduce adds the best 1-step route, dmd1 (the 2-step one is progressive2, above), on a short budget.
REPRO_EXTRA := $(if $(filter toy,$(PROFILE)),dmd1)
# The teacher at 4, 2 and 1 steps: the training-free sampler at the 4-, 2- and 1-step students' UNet calls and below.
SAMPLE_RUNS := teacher20 teacher16 teacher8 teacher4 teacher2 teacher1 guided16 $(STUDENTS) $(REPRO_EXTRA)

ifeq ($(PROFILE),toy)
SD := $(BIN)/snapdistill
TEACHER ?= toy
# Training pairs, toy val prompts per sampled row, optimisation steps of stage 1 and of each stage-2
# run (per round when progressive).
TOY_PAIRS ?= 8192
EVAL_N ?= 512
GUIDED_STEPS ?= 400
STEPS_STEPS ?= 250
# reproduce's dmd1: 300 generator steps of 16 (the bench's 1,500: BENCH_DMD_STEPS). 300 steps drew toy FID 447.2,
# exact 0.975 in 288 s; 400 steps 492.3, 0.992 in 372 s, which took reproduce to 20 min 50 s (README).
DMD_STEPS ?= 300
# Block-removed students start with blocks missing: on the toy world they recover only with a larger rate
# and more steps (bk-small at 500 steps and lr 1e-4 drew 0.12 exact on 256 val prompts; at 1,000 steps and
# lr 1e-3, 0.93; the same without feature KD, 0.68). Later flags override TRAIN_FLAGS.
ARCH_FLAGS ?= --max-steps 1000 --lr 1e-3
SOURCES ?= toy:$(TOY_PAIRS)
BUILD_FLAGS ?= --resolution 32 --shard-size 1024 --prefix toy --workers 2
# The learning rate is the commands' own default (by model size: 3e-4 for the toy UNet).
TRAIN_FLAGS ?= --batch-size 32 --checkpoint-every 100
PROMPT_FLAGS ?= --toy-val $(EVAL_N)
SAMPLE_FLAGS ?= --batch-size 64
EVAL_FLAGS ?=
# The FID-CLIP (here toy FID vs judge accuracy) trade-off over guidance scales, for two rows.
SWEEP_FLAGS ?= --guidance-sweep 4,10 --sweep-run $(R)/samples/teacher16 --sweep-run $(R)/samples/direct8
else
# The real recipe: weights from $$SNAPDISTILL_MODELS/$(PROFILE) or the Hugging Face cache, data and
# metric checkpoints by path. Every variable below can be set on the command line.
SD := $(BIN)/accelerate launch -m snapdistill
TEACHER := $(PROFILE)
SOURCES ?= $(error set SOURCES, e.g. SOURCES="laion-art:/data/laion-art coco:/data/coco/annotations/captions_train2017.json,images=/data/coco/train2017")
COCO_CAPTIONS ?= $(error set COCO_CAPTIONS to captions_val2017.json)
COCO_IMAGES ?= $(error set COCO_IMAGES to the val2017 image folder)
INCEPTION ?= $(error set INCEPTION to the FID Inception weights (pt_inception-2015-12-05.pth))
CLIP_MODEL ?= ViT-g-14
CLIP_CKPT ?= $(error set CLIP_CKPT to the open_clip checkpoint of CLIP_MODEL)
EVAL_N ?= 5000
GUIDED_STEPS ?= 6000
STEPS_STEPS ?= 4000
BUILD_FLAGS ?= --resolution 512 --min-side 512 --workers 16
TRAIN_FLAGS ?= --batch-size 8 --grad-accum 4 --lr 1e-5 --mixed-precision bf16 --gradient-checkpointing --checkpoint-every 500
PROMPT_FLAGS ?= --coco $(COCO_CAPTIONS) --limit $(EVAL_N)
SAMPLE_FLAGS ?= --batch-size 16 --dtype bf16 --size 512
SWEEP_FLAGS ?= --guidance-sweep 1,2,4,10 --sweep-run $(R)/samples/teacher20 --sweep-run $(R)/samples/direct8
EVAL_FLAGS ?= --inception-weights $(INCEPTION) --fid-reference $(COCO_IMAGES) --clip-model $(CLIP_MODEL) --clip-checkpoint $(CLIP_CKPT)
endif

reproduce: install $(R)/report/manifest.json
	@echo "report: $(R)/report/report.md"

# `make bench` trains its own runs (in $(RUNS)/bench/toy) on longer budgets than reproduce, then samples
# 1,024 toy val prompts per row, plus the block-removed (BK-SDM) bk-small 8-step student, the consistency
# students and the small decoder. At 9c2a178 the stage-2 runs (1,000 steps), bk-small (2,000), the decoder and
# the sampling took 43 min with stage 1 and the consistency runs reused (from scratch, adding their d3c491b
# times below, an estimated 57 min; not run).
# Measured cost on 2 cores at commit d3c491b (36.5 min in all): stage 1 at
# 1,200 steps 4.1 min; direct8, progressive4, direct8-base and consistency at 500 steps about 2 min each,
# direct4 3.1 min; consistency-base at 1,700 steps 7.1 min; bk-small 4.2 min; the decoder 2.1 min; the
# sampling, timing and data sections the rest.
BENCH_GUIDED_STEPS ?= 1200
# Stage 2 at 1,000 steps: in the study (3 training seeds) 500 steps gave the 8-step student toy FID 383.5/411.7/396.7,
# 1,000 steps 375.8/372.1/369.1; 500 steps at batch 64 (the same samples) 389.9/385.2.
BENCH_STEPS_STEPS ?= 1000
# The consistency rows keep the budget of the bench that compared them with the direct route at equal samples
# (1,200 + 500 steps of 32); they lost there by wide margins (README, "What the bench shows").
BENCH_CONSISTENCY_STEPS ?= 500
BENCH_ARCHS ?= bk-small
BENCH_DMD_STEPS ?= 1500
# bk-small at twice the previous bench's steps (1,000 steps gave 545.7, ratio 1.43, in the previous bench).
BENCH_ARCH_FLAGS ?= --max-steps 2000 --lr 1e-3
# The small decoder of the bench's *_smalldec rows (distill-decoder, AutoencoderTiny at half width), at batch 16.
BENCH_DECODER_STEPS ?= 4000
ARCHS ?= $(BENCH_ARCHS)
CONSISTENCY_STEPS ?= $(STEPS_STEPS)
bench: install
	$(MAKE) --no-print-directory RUNS=$(RUNS)/bench GUIDED_STEPS=$(BENCH_GUIDED_STEPS) \
		STEPS_STEPS=$(BENCH_STEPS_STEPS) CONSISTENCY_STEPS=$(BENCH_CONSISTENCY_STEPS) ARCHS="$(BENCH_ARCHS)" \
		ARCH_FLAGS="$(BENCH_ARCH_FLAGS)" DMD_STEPS=$(BENCH_DMD_STEPS) bench-runs
	$(PY) -m snapdistill.bench --runs $(RUNS)/bench/toy --out bench.json

bench-runs: $(foreach r,guided $(BENCH_STUDENTS) $(foreach a,$(ARCHS),arch-$(a)8) decoder,$(R)/$(r)/manifest.json)

$(R)/shards/manifest.json: | install
	$(SD) build-data $(foreach s,$(SOURCES),--source $(s)) $(BUILD_FLAGS) --out $(R)/shards

$(R)/shards-clean/manifest.json: $(R)/shards/manifest.json
	$(SD) recaption --in $(R)/shards --mode clean --out $(R)/shards-clean

$(R)/guided/manifest.json: $(R)/shards-clean/manifest.json
	$(SD) distill-guidance --teacher $(TEACHER) --shards $(R)/shards-clean --max-steps $(GUIDED_STEPS) \
		$(TRAIN_FLAGS) --overwrite --out $(R)/guided

# Stage 2 from the stage-1 student (the two-stage route): NAME, MODE, STEPS.
define STUDENT_RULE
$(R)/$(1)/manifest.json: $(R)/guided/manifest.json
	$(SD) distill-steps --teacher $(R)/guided/student --shards $(R)/shards-clean --from 16 --to $(3) \
		--mode $(2) --max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/$(1)
endef
$(eval $(call STUDENT_RULE,direct8,direct,8))
$(eval $(call STUDENT_RULE,direct4,direct,4))

# 16->8->4 progressive: its first round (16->8) is direct8 itself, so the second round starts from it (the
# same weights, bit for bit, as one 16->4 progressive run, without training the first round twice).
$(R)/progressive4/manifest.json: $(R)/direct8/manifest.json
	$(SD) distill-steps --teacher $(R)/direct8/student --shards $(R)/shards-clean --from 8 --to 4 \
		--mode progressive --max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/progressive4

# The end of the chain: 4->2 and 2->1, each round from the last round's student. Their teacher is a step-distilled
# student of at most 4 steps, so each round's landing target is its own DDIM steps on its own grid (the default for
# such a teacher; the 8->4 round above keeps two DPM-Solver++ substeps per step; README, "Two steps and one").
$(R)/progressive2/manifest.json: $(R)/progressive4/manifest.json
	$(SD) distill-steps --teacher $(R)/progressive4/student --shards $(R)/shards-clean --from 4 --to 2 \
		--mode progressive --max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/progressive2

$(R)/progressive1/manifest.json: $(R)/progressive2/manifest.json
	$(SD) distill-steps --teacher $(R)/progressive2/student --shards $(R)/shards-clean --from 2 --to 1 \
		--mode progressive --max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/progressive1

# SnapFusion's route, for the bench: the base teacher -> an unguided 8-step student.
$(R)/direct8-base/manifest.json: $(R)/shards-clean/manifest.json
	$(SD) distill-steps --teacher $(TEACHER) --shards $(R)/shards-clean --from 16 --to 8 --mode direct \
		--max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/direct8-base

# Latent consistency students for the bench (sampled at 2, 4 and 8 steps): from the stage-1 student, and from the
# base teacher on the budget of both stages together.
$(R)/consistency/manifest.json: $(R)/guided/manifest.json
	$(SD) distill-steps --mode consistency --teacher $(R)/guided/student --shards $(R)/shards-clean --to 8 \
		--max-steps $(CONSISTENCY_STEPS) $(TRAIN_FLAGS) --overwrite --out $(R)/consistency

$(R)/consistency-base/manifest.json: $(R)/shards-clean/manifest.json
	$(SD) distill-steps --mode consistency --teacher $(TEACHER) --shards $(R)/shards-clean --to 8 \
		--max-steps $$(($(GUIDED_STEPS) + $(CONSISTENCY_STEPS))) $(TRAIN_FLAGS) --overwrite --out $(R)/consistency-base

# The 1-step generator by distribution matching, for the bench: from the base teacher and the shards' captions
# alone (no image is decoded), at the default real guidance 1.5 and 5 fake updates per step; 1,500 steps of 16 took
# 1,240 s on 2 cores at 7fb2eed (toy FID 294.7, Q1_dmd 0.774), and --max-minutes caps them at 25 (README, "One step
# by distribution matching").
DMD_STEPS ?= 1500
DMD_FLAGS ?= --batch-size 16 --checkpoint-every 250 --max-minutes 25
$(R)/dmd1/manifest.json: $(R)/shards-clean/manifest.json
	$(SD) distill-steps --mode dmd --teacher $(TEACHER) --shards $(R)/shards-clean --max-steps $(DMD_STEPS) \
		$(DMD_FLAGS) --overwrite --out $(R)/dmd1

# The 2- and 4-step generators (DMD2's multi-step generator, trained by backward simulation) on dmd1's settings and
# step budget; each chain step costs a generator call more per sample drawn, so --max-minutes 20 caps them.
DMD_MULTI_FLAGS ?= --batch-size 16 --checkpoint-every 250 --max-minutes 20
$(R)/dmd2/manifest.json $(R)/dmd4/manifest.json: $(R)/dmd%/manifest.json: $(R)/shards-clean/manifest.json
	$(SD) distill-steps --mode dmd --to $* --teacher $(TEACHER) --shards $(R)/shards-clean \
		--max-steps $(DMD_STEPS) $(DMD_MULTI_FLAGS) --overwrite --out $(R)/dmd$*

# Block-removed students for the bench: the 16->8 direct student with output- and feature-level KD.
define ARCH_RULE
$(R)/arch-$(1)8/manifest.json: $(R)/guided/manifest.json
	$(SD) distill-steps --teacher $(R)/guided/student --shards $(R)/shards-clean --from 16 --to 8 --mode direct \
		--student-arch $(1) --max-steps $(STEPS_STEPS) $(TRAIN_FLAGS) $(ARCH_FLAGS) --overwrite --out $(R)/arch-$(1)8
endef
$(foreach a,$(ARCHS),$(eval $(call ARCH_RULE,$(a))))

# The bench's small decoder (not part of reproduce): AutoencoderTiny (TAESD's layout) at half width, L2, lr 4e-3, each
# batch half the teacher encoder's latents of the shards' images and half latents the 8-step student lands on for
# their captions (4,096, drawn once). Not the command's default (`kl`, the teacher's layout at half its channels):
# the toy decoder is 32 px wide, where a decode costs about as much per layer as per channel, and kl at half width
# decoded only 1.8-2.1x faster against the goal of 2x; tiny 2.8-3.6x. On the SD 1.5 layout at 512 px
# (random weights, 2 threads) kl at half width is 3.2x faster and tiny 12x. The study (pipeline against the same
# student with the teacher's decoder, README "What the bench shows") tried tiny and kl on encoder, sampled and mixed
# latents, kl at width 0.35 (28.6 dB, toy FID +39%), and tiny on the mix at 4,000 steps, the one within every goal
# (two seeds: 33.4/34.0 dB, the 8-step pipeline's toy FID -4.6%/-1.3%, lower being better, exact -0.3/+0.1 points).
$(R)/decoder/manifest.json: $(R)/direct8/manifest.json
	$(SD) distill-decoder --teacher $(TEACHER) --shards $(R)/shards --arch tiny --width 0.5 --loss l2 \
		--latents-from mix --sampler $(R)/direct8/student --sample-count 4096 \
		--max-steps $(BENCH_DECODER_STEPS) --batch-size 16 --checkpoint-every 500 --overwrite --out $(R)/decoder

# Sampled rows: the teacher (DPM-Solver++ with CFG 7.5) at 8/16/20 steps, the students at their own.
$(R)/samples/teacher%/manifest.json: | install
	$(SD) sample --teacher $(TEACHER) $(PROMPT_FLAGS) --steps $* $(SAMPLE_FLAGS) --overwrite --out $(R)/samples/teacher$*

$(R)/samples/guided16/manifest.json: $(R)/guided/manifest.json
	$(SD) sample --teacher $(R)/guided/student $(PROMPT_FLAGS) --steps 16 $(SAMPLE_FLAGS) --overwrite --out $(R)/samples/guided16

$(R)/samples/%/manifest.json: $(R)/%/manifest.json
	$(SD) sample --teacher $(R)/$*/student $(PROMPT_FLAGS) $(SAMPLE_FLAGS) --overwrite --out $(R)/samples/$*

$(R)/report/manifest.json: $(foreach r,$(SAMPLE_RUNS),$(R)/samples/$(r)/manifest.json)
	$(SD) eval $(foreach r,$(SAMPLE_RUNS),$(R)/samples/$(r)) --mse-reference $(R)/samples/teacher16 \
		$(EVAL_FLAGS) $(SWEEP_FLAGS) --out $(R)/report

clean:
	rm -rf $(RUNS) bench.json .pytest_cache
