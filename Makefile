# Two commands set everything up on a fresh Debian 12 machine: `make demo` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
MIXTRAL_MODEL ?=
TINY := $(BUILD)/models/tiny

.PHONY: deps build test demo clean fuzz fuzz-corpus test-sanitize train-deps train

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The default model is models/tale-mixtral, a small Mixtral trained here on A Tale of Two
# Cities (tools/train/); set MIXTRAL_MODEL to a real checkpoint to use that instead.
demo: build
	@bash scripts/demo.sh $(BUILD)/bin/mixtral "$(MIXTRAL_MODEL)"

# libFuzzer harnesses (fuzz/, clang 14, ASan+UBSan) built in their own folder, each run for
# FUZZ_SECONDS on the checked-in corpus; new inputs go to a temp folder, crashes fail the target.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZERS ?=

$(FUZZ_BUILD)/CMakeCache.txt:
	cmake -S . -B $(FUZZ_BUILD) -DMIXTRAL_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=Release

fuzz: deps $(FUZZ_BUILD)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD) --target fuzzers -j $(JOBS)
	bash scripts/fuzz.sh run $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZERS)

# Re-minimizes fuzz/corpus/* (-merge=1) from the seeds fuzz/make_seeds.py writes plus the corpus
# itself; FUZZ_EXTRA=DIR adds DIR/<harness> (e.g. a FUZZ_KEEP folder of a long run).
FUZZ_EXTRA ?=
fuzz-corpus: deps $(FUZZ_BUILD)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD) --target fuzzers -j $(JOBS)
	rm -rf $(FUZZ_BUILD)/seeds && python3 fuzz/make_seeds.py $(FUZZ_BUILD)/seeds
	for f in fuzz/*_fuzz.cc; do h=$$(basename $$f _fuzz.cc); mkdir -p $(FUZZ_BUILD)/seeds/$$h; \
	  FUZZ_HARNESS=$$h bash scripts/fuzz.sh merge $(FUZZ_BUILD) $(FUZZ_BUILD)/seeds/$$h \
	    $(if $(FUZZ_EXTRA),$(FUZZ_EXTRA)/$$h) || exit 1; done

# The loader, cache, tokenizer, server and CLI tests again with ASan+UBSan (g++), in their own
# folder, leaks checked too. mpi_test is left out (mpirun and OpenMPI's runtime under ASan were not
# tried), and so are the kernel, model and demo suites: they test arithmetic, not input handling.
SAN_BUILD ?= build-sanitize
SAN_TESTS := safetensors_test gguf_test gguf_tokenizer_test torch_checkpoint_test hostile_files_test \
             weight_cache_test tokenizer_test server_test server_hostile_test cli_test make_tiny_test
SAN_REGEX := ^($(shell echo $(SAN_TESTS) repack_cli_test | tr ' ' '|'))$$

$(SAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(SAN_BUILD) -DMIXTRAL_SANITIZE=ON -DCMAKE_BUILD_TYPE=Release

# Excluded by name: ServerHostile.HugePromptsAreRefusedFastWithBoundedMemory measures peak RSS
# against 256 MiB, and ASan's redzones and quarantine inflate RSS (measured +270 MiB), so it
# would test ASan, not the server.
SAN_EXCLUDE := ServerHostile.HugePromptsAreRefusedFastWithBoundedMemory
test-sanitize: deps $(SAN_BUILD)/CMakeCache.txt
	cmake --build $(SAN_BUILD) --target mixtral $(SAN_TESTS) -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) -L '$(SAN_REGEX)' -E '$(SAN_EXCLUDE)'

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD) $(SAN_BUILD)

# Training the default model (models/tale-mixtral) again: Debian's PyTorch, numpy and
# sentencepiece, and OpenBLAS (Debian's torch otherwise runs its matmuls on the reference BLAS,
# ~10x slower). Not part of `make test`. TRAIN_ARGS go to tools/train/train.py.
TRAIN_OUT ?= models/tale-mixtral
TRAIN_ARGS ?= --batch 4 --steps 150 --lr 3e-3 --warmup 10 --eval-every 30 --eval-chunks 4 --save-every 15
train-deps:
	apt-get install -y python3-torch python3-numpy python3-sentencepiece libopenblas0-pthread

train: train-deps
	nice -n 5 /usr/bin/python3 tools/train/train.py --out $(TRAIN_OUT) $(TRAIN_ARGS)
