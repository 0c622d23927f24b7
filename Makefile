# Build: make            -> ./run and ./export
#        make test       -> the whole test suite (last line: N passed, N failed)
#        make sanitize   -> the test suite on ASan + UBSan builds (build/sanitize)
#        make ARCH=-march=native -> the code around the kernels compiled for this CPU too
#        make BLIS=1     -> f32 prefill through BLIS (opt-in; rebuild with `make clean` first)
#        make examples   -> examples/generate and examples/nbce_qa (model.h in another program)
#        make static     -> build/static/run and build/static/export, statically linked
#        make CROSS=aarch64 (or armhf, riscv64) -> static cross builds in build/cross/T; make test-cross
#        make fuzz       -> every fuzz corpus for FUZZ_TIME seconds (tests/fuzz/README.md; needs clang)
CC ?= cc
OPT ?= -O3
# No -march by default: the kernels for every instruction-set level are in
# the binary and chosen when a model is loaded (kernels.h), so one build runs
# on any CPU of its architecture at that CPU's best level.
ARCH ?=
CFLAGS ?= $(strip $(OPT) $(ARCH))
CFLAGS += -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Wno-unused-function
LDLIBS += -lm -lpthread
# make BLIS=1: f32 matrices against batches of 16+ tokens go through BLIS
# (Debian: libblis-dev). Opt-in; see README "Benchmarks" for what it gains.
ifeq ($(BLIS),1)
CFLAGS += -DMODEL_BLIS
LDLIBS += -lblis
endif

# (with tempfile.h, which run.c and export.c share)
ENGINE = model.h kernels.h kernels_simd.h tokenizer.h tokenizer.c json.h gguf.h message.h unicode_tables.h tempfile.h
# the fuzz targets in tests/fuzz (see Fuzzing below)
FUZZ_TARGETS = model tokenizer encode json run export
REPLAY_BINS = $(addprefix build/replay/fuzz_,$(FUZZ_TARGETS))

all: run export

run: run.c $(ENGINE)
	$(CC) $(CFLAGS) -o $@ run.c tokenizer.c $(LDLIBS)

export: export.c $(ENGINE)
	$(CC) $(CFLAGS) -o $@ export.c tokenizer.c $(LDLIBS)

# test_model counts allocations: every allocation call goes through its wrappers.
ALLOC_WRAP = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign
WRAP_test_model = $(ALLOC_WRAP)
tests/bin/%: tests/%.c tests/check.h $(ENGINE)
	@mkdir -p tests/bin
	$(CC) $(CFLAGS) $(WRAP_$*) -o $@ $< tokenizer.c $(LDLIBS)

# Programs that embed the engine: model.h and tokenizer.c, nothing else.
EXAMPLES = examples/generate examples/nbce_qa
examples: $(EXAMPLES)
examples/%: examples/%.c $(ENGINE)
	$(CC) $(CFLAGS) -o $@ $< tokenizer.c $(LDLIBS)

# Statically linked, for copying to a machine without a matching libc.
static: run.c export.c $(ENGINE)
	@mkdir -p build/static
	$(CC) $(CFLAGS) -static -o build/static/run run.c tokenizer.c $(LDLIBS)
	$(CC) $(CFLAGS) -static -o build/static/export export.c tokenizer.c $(LDLIBS)

TEST_BINS = tests/bin/test_kernels tests/bin/test_json tests/bin/test_tokenizer tests/bin/test_model tests/bin/test_tempfile

# everything make test runs (make -j2 test-bins builds it two at a time)
# (static: run_tests.sh runs the static binary on an SSE2-only CPU under qemu-x86_64)
test-bins: all static $(TEST_BINS) $(EXAMPLES) $(REPLAY_BINS)

test: test-bins
	@sh tests/run_tests.sh

# The same suite on binaries built with AddressSanitizer and UBSan, in build/sanitize.
SAN = build/sanitize
# -g1: line tables only, which is all the sanitizers' reports use (full -g made
# each engine binary take 65 s to compile instead of 29, the kernels being
# compiled once per level)
SANFLAGS = -O1 -g1 $(ARCH) -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_CC = $(CC) $(SANFLAGS) -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64
SAN_BINS = $(addprefix $(SAN)/,run export generate nbce_qa test_kernels test_json test_tokenizer test_model test_tempfile) \
    $(addprefix $(SAN)/fuzz_,$(FUZZ_TARGETS))
$(SAN)/run $(SAN)/export: $(SAN)/%: %.c $(ENGINE)
	@mkdir -p $(SAN)
	$(SAN_CC) -o $@ $< tokenizer.c $(LDLIBS)
$(SAN)/generate $(SAN)/nbce_qa: $(SAN)/%: examples/%.c $(ENGINE)
	@mkdir -p $(SAN)
	$(SAN_CC) -o $@ $< tokenizer.c $(LDLIBS)
$(SAN)/test_%: tests/test_%.c tests/check.h $(ENGINE)
	@mkdir -p $(SAN)
	$(SAN_CC) $(if $(filter test_model,test_$*),$(ALLOC_WRAP)) -o $@ $< tokenizer.c $(LDLIBS)
sanitize: $(SAN_BINS)
	@BIN=$(SAN) sh tests/run_tests.sh

# Fuzzing (tests/fuzz/README.md). Each target is built three times: with
# clang's libFuzzer, ASan and UBSan in build/fuzz (make fuzz runs every
# corpus for FUZZ_TIME seconds); with the normal compiler and a plain main in
# build/replay (make test replays the seeds and the regression inputs); and
# so again with ASan and UBSan in build/sanitize (make sanitize).
FUZZ_CC ?= clang
FUZZ_TIME ?= 30
# the fuzz targets test parsing and refusals: the portable kernels alone (KERNELS_SCALAR_ONLY, kernels.h)
FUZZ_DEFS = -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DKERNELS_SCALAR_ONLY -DFUZZ_ROOT='"$(CURDIR)"' \
    -DFUZZ_MODEL='"$(CURDIR)/tests/fuzz/seeds/model/tiny-q8_0.bin"'
FUZZ_SRC = tests/fuzz/fuzz.c tests/fuzz/fuzz.h $(ENGINE) run.c export.c
FUZZ_FLAGS = -O1 -g1 $(ARCH) -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer $(FUZZ_DEFS)
# the compiler of each build directory
build/fuzz/%: FUZZ_COMPILE = $(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link
# the harness itself is not instrumented: its branches would only add noise to the coverage
build/fuzz/obj/fuzz.o: FUZZ_COMPILE = $(FUZZ_CC) $(FUZZ_FLAGS)
build/replay/%: FUZZ_COMPILE = $(CC) $(CFLAGS) $(FUZZ_DEFS)
$(SAN)/%: FUZZ_COMPILE = $(SAN_CC) $(FUZZ_DEFS)
# what every target of a directory shares, compiled once: the harness, the
# tokenizer (through the harness's allocator) and replay.c's main
%/obj/fuzz.o: tests/fuzz/fuzz.c tests/fuzz/fuzz.h
	@mkdir -p $(@D)
	$(FUZZ_COMPILE) -c -o $@ $<
%/obj/tokenizer.o: tokenizer.c tests/fuzz/fuzz.h $(ENGINE)
	@mkdir -p $(@D)
	$(FUZZ_COMPILE) -include tests/fuzz/fuzz.h -c -o $@ $<
%/obj/replay.o: tests/fuzz/replay.c
	@mkdir -p $(@D)
	$(FUZZ_COMPILE) -c -o $@ $<
.SECONDARY: $(foreach d,build/fuzz build/replay $(SAN),$(addprefix $(d)/obj/,fuzz.o tokenizer.o replay.o))
FUZZ_LINK = $(FUZZ_COMPILE) -include tests/fuzz/fuzz.h -o $@ $< $(filter %.o,$^) $(LDLIBS)
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRC) build/fuzz/obj/fuzz.o build/fuzz/obj/tokenizer.o
	$(FUZZ_LINK) -fsanitize=fuzzer
build/replay/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRC) $(addprefix build/replay/obj/,fuzz.o tokenizer.o replay.o)
	$(FUZZ_LINK)
# make sanitize replays them under ASan and UBSan too
$(SAN)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRC) $(addprefix $(SAN)/obj/,fuzz.o tokenizer.o replay.o)
	$(FUZZ_LINK)
FUZZ_BINS = $(addprefix build/fuzz/fuzz_,$(FUZZ_TARGETS))
fuzz-bins: $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$(FUZZ_JOBS) FUZZ_WORKERS=$(FUZZ_WORKERS) FUZZ_CORPORA="$(FUZZ_CORPORA)" sh tests/fuzz/run.sh

# Cross builds, statically linked, in build/cross/T (T = aarch64, armhf or
# riscv64; Debian's gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf,
# gcc-riscv64-linux-gnu). Beside each program, a script of its name runs it
# under qemu-user, so `make test-cross` runs the whole suite on each target
# through BIN=build/cross/T.
CROSS_TARGETS = aarch64 armhf riscv64
# make CROSS=T is make cross-T
ifneq ($(CROSS),)
.DEFAULT_GOAL := cross-$(CROSS)
endif
CROSS_CC_aarch64 = aarch64-linux-gnu-gcc
CROSS_CC_armhf = arm-linux-gnueabihf-gcc
CROSS_CC_riscv64 = riscv64-linux-gnu-gcc
CROSS_ARCH_aarch64 = -march=armv8-a # any AArch64: the dot-product kernels are chosen at run time where the CPU has them
CROSS_ARCH_armhf = -march=armv7-a -mfpu=neon-vfpv4 -mfloat-abi=hard # VFPv4 (Cortex-A7 on, Raspberry Pi 2 on): its fused multiply-add turns on the NEON kernels (kernels.h)
CROSS_ARCH_riscv64 = -march=rv64gc
CROSS_QEMU_aarch64 = qemu-aarch64 -cpu max
CROSS_QEMU_armhf = qemu-arm -cpu max
CROSS_QEMU_riscv64 = qemu-riscv64
CROSS_PROGRAMS = run export generate nbce_qa test_kernels test_json test_tokenizer test_model test_tempfile
CROSS_OPT = -O2 # Debian's aarch64 gcc 12 crashes vectorizing test_kernels.c at -O3

cross-%: $(ENGINE) run.c export.c tests/*.c tests/check.h examples/*.c
	@[ -n "$(CROSS_CC_$*)" ] || { echo "error: unknown cross target '$*' (one of: $(CROSS_TARGETS))" >&2; exit 1; }
	@mkdir -p build/cross/$*
	@for p in $(CROSS_PROGRAMS); do \
	    src=$$p.c; wrap=; case $$p in test_*) src=tests/$$p.c;; generate|nbce_qa) src=examples/$$p.c;; esac; \
	    [ $$p = test_model ] && wrap="$(ALLOC_WRAP)"; \
	    echo "$(CROSS_CC_$*) ... -o build/cross/$*/$$p.bin"; \
	    $(CROSS_CC_$*) $(CROSS_OPT) $(CROSS_ARCH_$*) -static -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra \
	        -Wno-unused-function $$wrap -o build/cross/$*/$$p.bin $$src tokenizer.c -lm -lpthread || exit 1; \
	    printf '#!/bin/sh\nexec $(CROSS_QEMU_$*) "$$0.bin" "$$@"\n' > build/cross/$*/$$p; chmod +x build/cross/$*/$$p; \
	done

# TEST_SUBSET=core (the default here): the C unit tests and the command-line
# checks; TEST_SUBSET=all adds the Python suites (about half an hour a target).
TEST_SUBSET ?= core
test-cross: $(addprefix cross-,$(CROSS_TARGETS))
	@echo "== $(CROSS_TARGETS) under qemu-user, side by side (logs in build/cross/T.log)"
	@for t in $(CROSS_TARGETS); do \
	    BIN=build/cross/$$t TEST_TMP=build/cross/$$t.tmp TEST_SUBSET=$(TEST_SUBSET) sh tests/run_tests.sh > build/cross/$$t.log 2>&1 & \
	done; wait
	@for t in $(CROSS_TARGETS); do grep -E '^FAIL' build/cross/$$t.log | sed "s/^/$$t: /"; echo "$$t: $$(tail -n 1 build/cross/$$t.log)"; done
	@for t in $(CROSS_TARGETS); do tail -n 1 build/cross/$$t.log; done | \
	    awk '{ p += $$1; f += $$3 } END { print p " passed, " f " failed"; exit f > 0 }'

clean:
	rm -f run export $(EXAMPLES)
	rm -rf tests/bin tests/tmp build

.PHONY: all examples static test test-bins sanitize test-cross fuzz fuzz-bins clean
