"""The linear strategy run over Mitogen: one Python interpreter per host, kept for the whole run.

ansible.cfg selects it (``strategy = mitogen_linear``). Plain SSH runs every task as a new SSH exec with a new
Python and the module's zip: about 0.45 s per task here, so a converge of ~170 mostly unchanged tasks spent
two minutes saying "ok". Over Mitogen a task takes about 0.1 s. Semantics are those of ``linear``.

ansible-core forks a worker process for every task and host; on a no-op converge that fork (its page faults,
a Mitogen broker thread and a connection to the multiplexer made for one task, the result pickled back) cost
as much as the task itself, and most of what differs between machines (the kernel's part). Here a task runs in
a thread of this process instead (``TaskThread``), through ansible-core's own worker slots, TaskExecutor and
results queue, on its own copy of the task, with one Mitogen connection shared by every thread of a play
(``SharedBindings``). Results are taken in only while no task thread runs, so a task reads the play's
variables as a forked worker read its copy. A task with a ``timeout`` (SIGALRM reaches only a main thread),
an ``async`` task and the actions that prompt or wait for a host to come back still fork a worker.
``LLMCLOUD_TASK_THREADS=off`` forks a worker for every task, as ansible-core's own strategies do.

Whatever a forked worker loads or compiles dies with it. Two things here keep that work from being done again
in each worker (and in each task thread):

- Before the first task this process loads, once, what nearly every worker loaded for itself: the filter and
  test plugins (ours in roles/*/filter_plugins included), the action plugins, the module result decoder, and
  the list of installed collections that Mitogen reads for each task of a collection's module (~0.1 s each
  with the ``ansible`` package's ~95 collections). Workers inherit all of it.
- Jinja compiles a template to Python code each time Ansible templates a string (ansible-core keeps no cache:
  a no-op converge compiled ~1,300 times, 453 distinct templates, ~10 % of its time). ``TemplateCodeCache``
  keeps the code on disk, per template and per everything that shapes the code (see its docstring).

One more thing is done once here instead of before every task: ansible-core reads and parses a play's
``vars_files`` (vars/site.yml) again each time it gathers a task's variables, ~300 times in a no-op converge
of one host. ``cache_vars_files`` keeps each file's parsed content for as long as the file is unchanged.

None of it changes what a task does. A failure to warm is ignored (workers then load what they need, as
before); ``LLMCLOUD_TEMPLATE_CACHE=off`` turns the cache off, ``LLMCLOUD_TASK_THREADS=off`` the threads. The
`mitogen` package is pinned in requirements.txt. To go back to plain SSH and forked workers for a run:
``ANSIBLE_STRATEGY=linear ansible-playbook ...``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import marshal
import os
import shutil
import stat
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import ansible.plugins.strategy
import ansible.plugins.strategy.linear
import ansible_mitogen.planner
import ansible_mitogen.process
import ansible_mitogen.strategy
import jinja2
import mitogen.fork
import mitogen.unix
from ansible.collections.list import list_collection_dirs
from ansible.errors import AnsibleError
from ansible.executor.process.worker import WorkerProcess
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.module_utils.ansible_release import __version__ as ansible_version
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import PluginLoader, action_loader, filter_loader, test_loader
from ansible.utils.display import Display
from ansible.utils.fqcn import add_internal_fqcns
from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

try:  # private to ansible-core (2.19); without it every task forks a worker, as in ansible-core's strategies
    from ansible._internal import _task
    from ansible._internal._errors import _error_utils
except ImportError:
    _task = _error_utils = None
try:  # private to ansible-core and Jinja: without them (other versions) templates compile as before, uncached
    from ansible._internal._templating import _jinja_bits
    from jinja2.utils import _PassArg
except ImportError:
    _jinja_bits = _PassArg = None

display = Display()

# Modules nearly every worker imported: the module result decoder (private to ansible-core) and the packages
# behind ansible.builtin.* names of filters, tests and lookups.
_SHARED_MODULES = (
    "ansible.module_utils._internal._json._profiles._module_legacy_m2c",
    "ansible_collections.ansible.builtin.plugins.filter",
    "ansible_collections.ansible.builtin.plugins.test",
    "ansible_collections.ansible.builtin.plugins.lookup",
)


class TemplateCodeCache:
    """Jinja's code for a template string, kept in a private folder and shared by every worker and run.

    The code Jinja generates depends on the template, on the environment's syntax and code generator
    settings, on Ansible's compile options (backslash escaping, embedded templates), on the Python, Jinja and
    ansible-core versions, and on how each filter and test the template names takes its arguments (a filter
    that asks for the context is passed it). All of these but the last make the key; the last is stored with
    the code and checked against the filters and tests as they resolve now: a changed plugin means a compile.

    Only whole template strings are cached (Ansible's expressions and Jinja's own includes compile as before).
    The folder is created private (0700); one another user could write to is not used, since its content is
    code this process would run. It holds at most MAX_ENTRIES templates (it is emptied when it has more).
    """

    MAX_ENTRIES = 20_000

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.memory: dict[str, object] = {}
        self.compiles = self.loads = 0

    @classmethod
    def default_folder(cls) -> Path:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        tag = f"py{sys.version_info[0]}.{sys.version_info[1]}-{importlib.util.MAGIC_NUMBER.hex()}"
        versions = f"{tag}-jinja{jinja2.__version__}-core{ansible_version}"
        return base / "llmcloud" / "ansible-templates" / versions

    def ready(self) -> bool:
        """Create the folder and say whether it is safe to use. It and the two folders above it (`llmcloud`,
        `ansible-templates`) must be ours and writable by nobody else: where one of ours is (a umask of 002),
        that is mended here; one that is not ours means no cache."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            for path in (self.folder.parent.parent, self.folder.parent, self.folder):
                info = path.lstat()
                if info.st_uid != os.geteuid() or not stat.S_ISDIR(info.st_mode):
                    display.warning(f"Compiled templates not cached: {path} is not a folder of this user.")
                    return False
                private = 0o700 if path == self.folder else info.st_mode & 0o755
                if stat.S_IMODE(info.st_mode) != private and (path == self.folder or info.st_mode & 0o022):
                    path.chmod(private)
            if len(os.listdir(self.folder)) > self.MAX_ENTRIES:
                shutil.rmtree(self.folder)
                self.folder.mkdir(mode=0o700)
        except OSError as error:
            display.vvv(f"mitogen_linear: templates compiled without a cache ({error})")
            return False
        return True

    @staticmethod
    def key(environment, source: str) -> str | None:
        """The cache key of `source` compiled in `environment` now, or None when it must not be cached."""
        if environment._debuggable_template_source or environment.is_async:
            return None
        context = _jinja_bits._TemplateCompileContext.current(optional=True)
        shape = [
            sys.version,
            jinja2.__version__,
            ansible_version,
            f"{type(environment).__module__}.{type(environment).__qualname__}",
            f"{environment.code_generator_class.__module__}.{environment.code_generator_class.__qualname__}",
            environment.block_start_string,
            environment.block_end_string,
            environment.variable_start_string,
            environment.variable_end_string,
            environment.comment_start_string,
            environment.comment_end_string,
            environment.line_statement_prefix,
            environment.line_comment_prefix,
            environment.trim_blocks,
            environment.lstrip_blocks,
            environment.newline_sequence,
            environment.keep_trailing_newline,
            environment.optimized,
            repr(environment.autoescape),
            sorted(environment.extensions),
            sorted(getattr(environment, "intercepted_binops", ())),
            sorted(getattr(environment, "intercepted_unops", ())),
            None if environment.finalize is None else repr(_PassArg.from_obj(environment.finalize)),
            None if context is None else context.escape_backslashes,
            _jinja_bits._TemplateConfig.allow_embedded_templates,
            source,
        ]
        return hashlib.sha256(json.dumps(shape, default=str).encode()).hexdigest()

    @staticmethod
    def calling_conventions(environment, names) -> list[list]:
        """How each of `names` ([kind, name]: filters, tests) is called as resolved now: [kind, name, how]."""
        conventions = []
        for kind, name in names:
            plugins = environment.filters if kind == "filter" else environment.tests
            try:
                plugin = plugins.get(name)
            except Exception:  # Jinja reports an unknown plugin where the template uses it
                plugin = None
            passed = None if plugin is None else _PassArg.from_obj(plugin)
            conventions.append([kind, name, None if passed is None else passed.name])
        return conventions

    @staticmethod
    def plugin_names(template: nodes.Template) -> list[list]:
        """The filters and tests a parsed template names, as [kind, name], sorted."""
        found = {
            ("filter" if isinstance(node, nodes.Filter) else "test", node.name)
            for node in template.find_all((nodes.Filter, nodes.Test))
        }
        return [list(pair) for pair in sorted(found)]

    def compile(self, original, environment, source: str):
        key = self.key(environment, source)
        if key is None:
            return original(environment, source)
        code = self.memory.get(key) or self._read(key, environment)
        if code is not None:
            self.loads += 1
            return code
        try:
            parsed = environment._parse(source, None, None)
            code = original(environment, parsed)
        except TemplateSyntaxError:
            return original(environment, source)  # raises as Jinja would, showing the template's source
        self.compiles += 1
        self.memory[key] = code
        self._write(key, [self.calling_conventions(environment, self.plugin_names(parsed)), code])
        return code

    def _read(self, key: str, environment):
        try:
            conventions, code = marshal.loads((self.folder / key).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        if conventions != self.calling_conventions(environment, [entry[:2] for entry in conventions]):
            return None  # a filter or test is now called differently: compile again
        self.memory[key] = code
        return code

    def _write(self, key: str, entry: list) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".new-", delete=False) as staged:
                staged.write(marshal.dumps(entry))
            os.replace(staged.name, self.folder / key)
        except (OSError, ValueError) as error:
            display.vvv(f"mitogen_linear: compiled template not kept ({error})")


def install_template_cache(folder: Path) -> TemplateCodeCache | None:
    """Route AnsibleEnvironment.compile (whole template strings) through a TemplateCodeCache kept in `folder`;
    None when the folder cannot be used safely (then nothing changes)."""
    if _jinja_bits is None or _PassArg is None:
        return None
    cache = TemplateCodeCache(folder)
    if not cache.ready():
        return None
    AnsibleEnvironment = _jinja_bits.AnsibleEnvironment
    original = AnsibleEnvironment.compile

    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        if isinstance(source, str) and name is None and filename is None and not raw and not defer_init:
            return cache.compile(original, self, source)
        return original(self, source, name, filename, raw, defer_init)

    AnsibleEnvironment.compile = compile
    return cache


def _cache_templates() -> None:
    """Install the template cache (LLMCLOUD_TEMPLATE_CACHE=off: not); workers inherit it."""
    if os.environ.get("LLMCLOUD_TEMPLATE_CACHE", "on").lower() not in {"off", "0", "no", "false"}:
        install_template_cache(TemplateCodeCache.default_folder())


def cache_vars_files() -> None:
    """Parse each vars_files file once per run and content: ansible-core parses a play's vars_files again for
    every task and host (DataLoader.load_from_file with cache="vaulted" keeps encrypted files only). The key
    is the file's path, inode, size and modification time, so a file changed during the run is read again."""
    original = DataLoader.load_from_file
    parsed: dict[tuple, object] = {}

    def load_from_file(
        self, file_name, cache="all", unsafe=False, json_only=False, trusted_as_template=False
    ):
        if cache != "vaulted" or not unsafe:  # vars_files asks for exactly this; every other caller as before
            return original(self, file_name, cache, unsafe, json_only, trusted_as_template)
        path = self.path_dwim(file_name)
        try:
            found = os.stat(path)
        except OSError:  # Ansible's own error
            return original(self, file_name, cache, unsafe, json_only, trusted_as_template)
        key = (path, found.st_ino, found.st_size, found.st_mtime_ns, json_only, trusted_as_template)
        if key not in parsed:
            parsed[key] = original(self, file_name, cache, unsafe, json_only, trusted_as_template)
        return parsed[key]

    DataLoader.load_from_file = load_from_file


# The plugin caches as _warm_plugins left them: a loader whose cache is another object was emptied since.
_warmed: tuple = ()


def _plugin_caches() -> tuple:
    """The caches a worker reads: the filter and test wrappers, the action plugins' modules."""
    return (
        filter_loader._cached_non_collection_wrappers,
        test_loader._cached_non_collection_wrappers,
        action_loader._module_cache,
    )


def _warm_plugins() -> None:
    """Load the filter, test and action plugins here, where each worker finds them. A role with plugins of its
    own, included during the play (include_role), empties these caches (a new cache object), so this runs
    before each task and does the work again only then."""
    global _warmed
    caches = _plugin_caches()
    if len(caches) == len(_warmed) and all(now is then for now, then in zip(caches, _warmed, strict=True)):
        return
    for loader in (filter_loader, test_loader):
        for _plugin in loader.all():
            pass
    for _plugin in action_loader.all(class_only=True):
        pass
    _warmed = _plugin_caches()


def _warm_modules() -> None:
    """Import what every worker imported, and list the installed collections once: Mitogen's planner listed
    them again in each worker that ran a collection's module, and the list is the same for the whole run."""
    for name in _SHARED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # another ansible-core: its workers import what they need
            display.vvv(f"mitogen_linear: {name} not preloaded")
    if getattr(ansible_mitogen.planner, "_load_collections", None) is None:
        return
    dirs = frozenset(path.decode("utf-8") for path in list_collection_dirs())

    def load_collections(invocation) -> None:  # the signature of ansible_mitogen.planner._load_collections
        invocation._extra_sys_paths.update(dirs)

    ansible_mitogen.planner._load_collections = load_collections


def _try(step) -> None:
    try:
        step()
    except Exception as error:  # an optimisation only: never fail a run over it
        display.vvv(f"mitogen_linear: {step.__name__} skipped ({error!r})")


# Tasks run in a thread of this process instead of a forked worker process, except these: a task with its own
# time limit (ansible-core enforces it with SIGALRM, which only a process's main thread receives), an
# asynchronous task, and the actions that prompt or wait for a host to come back.
_FORKED_ACTIONS = frozenset(add_internal_fqcns(("pause", "reboot", "wait_for_connection")))


def threads_wanted() -> bool:
    """LLMCLOUD_TASK_THREADS=off: every task forks a worker process, as in ansible-core's own strategies."""
    setting = os.environ.get("LLMCLOUD_TASK_THREADS", "on").lower()
    return _task is not None and setting not in {"off", "0", "no", "false"}


def runs_in_thread(task) -> bool:
    """Whether `task` may run in a thread: not one that needs a process of its own (see _FORKED_ACTIONS)."""
    return not (task.timeout or task.async_val or task.action in _FORKED_ACTIONS)


class _ResultsClosed(Exception):
    """The results queue is closed: the run is over."""


class TaskThread(threading.Thread):
    """One task for one host, run in this process where ansible-core forks a WorkerProcess: the strategy's
    worker slots, throttling, callbacks and results queue stay ansible-core's own, and a result travels the
    same way (TaskExecutor, then the results queue).

    A worker process changes its copy of the task as it runs it (the task's and its blocks' attributes are
    templated in place with this host's variables): a thread gets a copy of its own, its parents included.
    Its Mitogen connection goes through this process's shared bindings (SharedBindings)."""

    def __init__(
        self,
        *,
        final_q,
        task_vars,
        host,
        task,
        play_context,
        loader,
        variable_manager,
        shared_loader_obj,
        worker_id,
        cliargs=None,
    ):
        super().__init__(name=f"llmcloud-task-{worker_id}", daemon=True)
        self._final_q = final_q
        self._task_vars = task_vars
        self._host = host
        self._task = task.copy(exclude_tasks=True)
        self._play_context = play_context
        self._loader = loader
        self._variable_manager = variable_manager
        self._shared_loader_obj = shared_loader_obj
        self.worker_id = worker_id
        self.pid = None  # no process of its own: the task queue manager's signal handler passes it over
        self.exitcode = None  # as a process's: None while it runs, 0 once it sent its result, 1 if it crashed

    def run(self) -> None:
        try:
            with _task.TaskContext(self._task):
                result = TaskExecutor(
                    self._host,
                    self._task,
                    self._task_vars,
                    self._play_context,
                    self._loader,
                    self._shared_loader_obj,
                    self._final_q,
                    self._variable_manager,
                ).run()
            self._send(result, self._task.dump_attrs())
        except _ResultsClosed:  # the run ended (Ctrl-C) before this task did: nobody reads its result
            self.exitcode = 1
        except BaseException:  # as a crashed worker: the strategy stops ("a worker ... in a dead state")
            display.error(f"{self._task} on {self._host} crashed its thread:\n{traceback.format_exc()}")
            self.exitcode = 1
        else:
            self.exitcode = 0

    def _send(self, result: dict, task_fields: dict) -> None:
        """Send the result as a worker process does; one that cannot be sent is sent as the task's failure."""
        try:
            self._final_q.send_task_result(
                _RawTaskResult(host=self._host, task=self._task, return_data=result, task_fields=task_fields)
            )
        except (OSError, ValueError) as error:  # what a closed queue raises
            raise _ResultsClosed from error
        except Exception as error:
            if not task_fields:
                raise
            try:
                raise AnsibleError("Task result omitted due to queue send failure.") from error
            except AnsibleError as failure:
                self._send(_error_utils.result_dict_from_exception(failure), {})

    # What the strategy and the task queue manager ask of a worker process: a thread is not closed or stopped
    # from outside (a daemon thread ends with the process).
    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass


_plugin_loads = threading.RLock()


def serialize_plugin_loads() -> None:
    """Load one plugin's module at a time. ansible-core puts a plugin's module in sys.modules before running
    its code and hands that module to whoever asks for the same plugin meanwhile: in a forked worker nobody
    else asks, but a second task thread then got a module without its classes yet ("module
    'ansible.plugins.connection.mitogen_local' has no attribute 'Connection'")."""
    original = PluginLoader._load_module_source

    def _load_module_source(self, *, python_module_name, path):
        with _plugin_loads:
            return original(self, python_module_name=python_module_name, path=path)

    PluginLoader._load_module_source = _load_module_source


def _make_worker(**kwargs):
    """WorkerProcess as ansible-core's _queue_task calls it: a thread for each task that may run in one."""
    if runs_in_thread(kwargs["task"]):
        return TaskThread(**kwargs)
    return WorkerProcess(**kwargs)


class SharedBindings(ansible_mitogen.process.WorkerModel):
    """Mitogen's worker model for tasks run in threads: one broker and one connection to Mitogen's connection
    multiplexer for the whole play, shared by every task thread, where a forked worker made a broker (a
    thread) and a connection for its one task. A forked worker uses Mitogen's classic model, as before.

    A process holds one Mitogen context id, which the multiplexer it connects to assigns: every host's
    connection goes through the first multiplexer (forked workers' too, so a host keeps one connection)."""

    def __init__(self, classic) -> None:
        self._classic = classic
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._broker = None
        self._parent = None
        classic._listener_for_name = lambda _name: classic._muxes[0].path

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def on_strategy_start(self) -> None:
        # In the main thread, which must own the broker: Mitogen shuts a broker down when its thread ends.
        self._classic.on_strategy_start()
        with self._lock:
            if self._broker is None:
                self._broker = ansible_mitogen.process.Broker()

    def on_strategy_complete(self) -> None:
        self._classic.on_strategy_complete()
        with self._lock:
            if self._broker is not None and not self._forked():
                self._broker.shutdown()
                self._broker.join()
                self._broker = self._parent = None
                mitogen.fork.on_fork()  # as Mitogen does: no latch of this broker is handed to a later fork

    def get_binding(self, inventory_name):
        if self._forked():
            return self._classic.get_binding(inventory_name)
        with self._lock:
            if self._parent is None:
                path = self._classic._muxes[0].path
                try:
                    router, self._parent = mitogen.unix.connect(path=path, broker=self._broker)
                except mitogen.unix.ConnectError as error:
                    raise AnsibleError(ansible_mitogen.process.shutting_down_msg % (error,)) from error
                router.max_message_size = ansible_mitogen.process.MAX_MESSAGE_SIZE
            return _SharedBinding(self._parent)


class _SharedBinding(ansible_mitogen.process.Binding):
    def __init__(self, parent) -> None:
        self._parent = parent

    def get_service_context(self):
        return self._parent

    def get_child_service_context(self):
        return self._parent

    def close(self) -> None:  # the connection stays for the play's next tasks
        pass


def _forked_worker_run(original):
    """A worker forked while this process holds a Mitogen broker first forgets that broker's latches."""

    def run(self):
        mitogen.fork.on_fork()
        return original(self)

    return run


_prepared = False  # the warm-up of StrategyModule.run is done (once per ansible-playbook)
_shared_bindings: SharedBindings | None = None  # the task threads' worker model, made at the first play


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, ansible.plugins.strategy.linear.StrategyModule):
    def run(self, iterator, play_context):
        global _prepared
        if not _prepared:  # once per ansible-playbook, at its first play
            _prepared = True
            for step in (_warm_modules, _cache_templates, cache_vars_files):
                _try(step)
            if threads_wanted():
                os.environ.setdefault("MITOGEN_CPU_COUNT", "1")  # one multiplexer: see SharedBindings
                WorkerProcess._run = _forked_worker_run(WorkerProcess._run)
                serialize_plugin_loads()
        return super().run(iterator, play_context)

    def _get_worker_model(self):
        global _shared_bindings
        classic = super()._get_worker_model()
        if not threads_wanted():
            return classic
        if _shared_bindings is None:
            _shared_bindings = SharedBindings(classic)
        return _shared_bindings

    def _process_pending_results(self, iterator, one_pass=False, max_passes=None):
        """Results are taken in (facts and registered variables set, hosts added) only while no task runs in
        a thread: a task thread reads the play's variables as it runs, as a forked worker read its copy, and
        nothing changes them under it. The strategy's wait for a step's results waits for that."""
        if any(isinstance(worker, TaskThread) and worker.is_alive() for worker in self._workers):
            return []
        return super()._process_pending_results(iterator, one_pass, max_passes)

    def _queue_task(self, host, task, task_vars, play_context):
        _try(_warm_plugins)
        if not threads_wanted():
            return super()._queue_task(host, task, task_vars, play_context)
        # ansible-core's own _queue_task, with a thread where it would fork a worker process
        ansible.plugins.strategy.WorkerProcess = _make_worker
        try:
            return super()._queue_task(host, task, task_vars, play_context)
        finally:
            ansible.plugins.strategy.WorkerProcess = WorkerProcess
