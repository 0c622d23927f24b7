# Build: make            -> ./run and ./export
#        make test       -> the whole test suite (last line: N passed, N failed)
#        make sanitize   -> the test suite on ASan + UBSan builds (build/sanitize)
#        make PORTABLE=1 -> no -march=native (scalar kernels unless CFLAGS adds SIMD flags)
#        make BLIS=1     -> f32 prefill through BLIS (opt-in; rebuild with `make clean` first)
CC ?= cc
OPT ?= -O3
ifeq ($(PORTABLE),1)
ARCH ?=
else
ARCH ?= -march=native
endif
CFLAGS ?= $(OPT) $(ARCH)
CFLAGS += -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Wno-unused-function
LDLIBS += -lm -lpthread
# make BLIS=1: f32 matrices against batches of 16+ tokens go through BLIS
# (Debian: libblis-dev). Opt-in; see README "Benchmarks" for what it gains.
ifeq ($(BLIS),1)
CFLAGS += -DMODEL_BLIS
LDLIBS += -lblis
endif

ENGINE = model.h kernels.h tokenizer.h tokenizer.c json.h unicode_tables.h

all: run export

run: run.c $(ENGINE)
	$(CC) $(CFLAGS) -o $@ run.c tokenizer.c $(LDLIBS)

export: export.c $(ENGINE)
	$(CC) $(CFLAGS) -o $@ export.c tokenizer.c $(LDLIBS)

tests/bin/%: tests/%.c $(ENGINE)
	@mkdir -p tests/bin
	$(CC) $(CFLAGS) -o $@ $< tokenizer.c $(LDLIBS)

TEST_BINS = tests/bin/test_kernels tests/bin/test_json tests/bin/test_tokenizer tests/bin/test_model

test: all $(TEST_BINS)
	@sh tests/run_tests.sh

# The same suite on binaries built with AddressSanitizer and UBSan, in build/sanitize.
SAN = build/sanitize
SANFLAGS = -O1 -g $(ARCH) -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
sanitize:
	@mkdir -p $(SAN)
	$(CC) $(SANFLAGS) -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -o $(SAN)/run run.c tokenizer.c $(LDLIBS)
	$(CC) $(SANFLAGS) -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -o $(SAN)/export export.c tokenizer.c $(LDLIBS)
	for t in test_kernels test_json test_tokenizer test_model; do \
	    $(CC) $(SANFLAGS) -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -o $(SAN)/$$t tests/$$t.c tokenizer.c $(LDLIBS) || exit 1; done
	@BIN=$(SAN) sh tests/run_tests.sh

clean:
	rm -f run export
	rm -rf tests/bin tests/tmp build

.PHONY: all test sanitize clean
