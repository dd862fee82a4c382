PY ?= python3

.PHONY: compile test test-pure test-c bench ceiling capacity-figures vswrk cluster-figures clean debug test-asan testinstalled test-hostile fuzz soak differential fuzz-figures c1m image scaleout

compile:            ## build the extensions in place (src/fastc1k/*.so)
	$(PY) setup.py build_ext --inplace

test:               ## the whole suite, both engines, against the installed package
	$(PY) -m pip install -q '.[test]' && $(PY) -m pytest

test-pure:          ## the suite with the pure-Python engine only
	FASTC1K_TEST_ENGINES=python $(PY) -m pytest

test-c:
	FASTC1K_TEST_ENGINES=c $(PY) -m pytest

debug:              ## the extensions in place with FASTC1K_DEBUG=1: -O0 -g, FC_ASSERT and FC_DBG compiled in
	FASTC1K_DEBUG=1 $(PY) setup.py build_ext --inplace --force

ASAN_DIR ?= build/asan
ASAN_TESTS ?= tests/test_conformance.py tests/test_bodies.py tests/test_limits.py tests/test_hostile.py tests/test_core_c.py
test-asan:          ## C engine built with ASan+UBSan in build/asan (the tree's .so untouched), conformance suite on it
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r src/fastc1k $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/fastc1k/_core.*.so
	FASTC1K_SANITIZE=1 FASTC1K_ONLY=fastc1k._core $(PY) setup.py build_ext --force \
		--build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/tmp
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		FASTC1K_TEST_ENGINES=c PYTHONPATH=$(ASAN_DIR) $(PY) -m pytest -p no:cacheprovider -m 'not slow' \
		-k 'not memory' $(ASAN_TESTS)  # ASan's quarantine holds freed memory: RSS tests mean nothing

bench:             ## pytest-benchmark suites, every server side by side (~10 min; as root for the quota)
	PYTHONPATH=src:. $(PY) -m pytest bench --benchmark-autosave \
		--benchmark-storage=file://bench/results/benchmarks --benchmark-group-by=group \
		--benchmark-columns=min,median,max,rounds

ceiling:           ## the README's Performance figures and chart, bench/results/ceiling.* (~5 min; as root)
	PYTHONPATH=src:. $(PY) -m bench.ceiling

capacity-figures:  ## the README's capacity table: both engines and nginx in one container, bench/results/capacity.* (~10 min; as root)
	PYTHONPATH=src:. $(PY) -m bench.figures capacity

vswrk:             ## the README's load generator vs wrk figures, bench/results/vswrk.* (~3 min)
	PYTHONPATH=src:. $(PY) -m bench.figures vswrk

cluster-figures:   ## the README's load-farm-on-Dask figures, bench/results/cluster.json (~2 min)
	PYTHONPATH=src:. $(PY) -m bench.cluster

scaleout:          ## the README's scale-out table and chart, bench/results/scaleout.* (~10 min; as root)
	PYTHONPATH=src $(PY) -m fastc1k.capacity scaleout --replicas 1,2,4 --balancer kernel,haproxy-http,haproxy-tcp \
		--container cpus=0.1,memory=256M --fault kill,freeze --out bench/results --readme README.md --quiet

FUZZ_SECONDS ?= 600
test-hostile:       ## hostile input, parser differential, short fuzz, soak (10 s), 10k-connection probe; both engines
	PYTHONPATH=src $(PY) -m pytest -m "not slow" tests/test_hostile.py tests/test_differential.py tests/test_fuzz.py \
		tests/test_soak.py tests/test_probe.py

fuzz:               ## coverage-guided fuzz of the C parser, instrumented with clang (FUZZ_SECONDS=600)
	PY=$(PY) sh fuzz/build.sh && PY=$(PY) sh fuzz/run.sh $(FUZZ_SECONDS)

SOAK_SECONDS ?= 600
DIFF_EXAMPLES ?= 100000
soak:               ## the soak at 70% of capacity, with churn (C engine; SOAK_SECONDS=600): bench/results/soak.* and its README block
	PYTHONPATH=src:. $(PY) -m bench.hardening soak --seconds $(SOAK_SECONDS)

differential:       ## the parser differential, DIFF_EXAMPLES per test (~20 min at 100000): bench/results/differential.* and its README block
	PYTHONPATH=src:. $(PY) -m bench.hardening differential --examples $(DIFF_EXAMPLES)

fuzz-figures:       ## atheris on the normal build for FUZZ_SECONDS (no clang needed): bench/results/fuzz.* and its README block
	PYTHONPATH=src:. $(PY) -m bench.hardening fuzz --seconds $(FUZZ_SECONDS)

c1m:                ## hold 1,000,000 connections, bench/results/c1m.* and the README block (heavy: ~12 GB RAM, a few minutes)
	PYTHONPATH=src:. $(PY) -m bench.figures c1m

testinstalled:      ## sdist -> wheel from the sdist -> fresh venv in /tmp -> the suite from outside the tree
	PY=$(PY) bash scripts/testinstalled.sh

image:              ## the container image, by podman, offline: the sdist's wheel, a Debian base when no registry answers
	PY=$(PY) bash scripts/image.sh

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
	find src -name '*.so' -delete; find src -name '*.c' -delete
