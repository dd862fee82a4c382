PY ?= python3

.PHONY: compile test test-pure test-c bench clean debug test-asan testinstalled

compile:            ## build the extensions in place (src/fastc1k/*.so)
	$(PY) setup.py build_ext --inplace

test:               ## the whole suite, both engines, against the installed package
	$(PY) -m pip install -q '.[test]' && $(PY) -m pytest

test-pure:          ## the suite with the pure-Python engine only
	FASTC1K_TEST_ENGINES=python $(PY) -m pytest

test-c:
	FASTC1K_TEST_ENGINES=c $(PY) -m pytest

bench:
	$(PY) -m pytest bench --benchmark-autosave

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
	find src -name '*.so' -delete; find src -name '*.c' -delete
