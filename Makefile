# Two commands set everything up on a fresh Debian 12 machine: `make demo` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
MIXTRAL_MODEL ?=
TINY := $(BUILD)/models/tiny

.PHONY: deps build test demo clean

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The default model is the tiny random one (the real tokenizer with random weights), so the
# demo runs anywhere; set MIXTRAL_MODEL to a real checkpoint to use that instead.
demo: build
	@bash scripts/demo.sh $(BUILD)/bin/mixtral "$(MIXTRAL_MODEL)"

clean:
	rm -rf $(BUILD)
