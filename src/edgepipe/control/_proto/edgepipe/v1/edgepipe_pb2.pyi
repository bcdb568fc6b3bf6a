from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SUPERVISOR: _ClassVar[Role]
    ROLE_STAGE: _ClassVar[Role]
    ROLE_MONITOR: _ClassVar[Role]
    ROLE_CLIENT: _ClassVar[Role]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_INPUT: _ClassVar[Direction]
    DIRECTION_OUTPUT: _ClassVar[Direction]

class Construct(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSTRUCT_UNSPECIFIED: _ClassVar[Construct]
    CONSTRUCT_TARGET: _ClassVar[Construct]
    CONSTRUCT_RAW: _ClassVar[Construct]
    CONSTRUCT_INSTANCE: _ClassVar[Construct]
    CONSTRUCT_FUNCTION: _ClassVar[Construct]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_VERSION_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_MESSAGE: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_UNSUPPORTED: _ClassVar[ErrorCode]
    ERROR_CODE_BUSY: _ClassVar[ErrorCode]
ROLE_UNSPECIFIED: Role
ROLE_SUPERVISOR: Role
ROLE_STAGE: Role
ROLE_MONITOR: Role
ROLE_CLIENT: Role
DIRECTION_UNSPECIFIED: Direction
DIRECTION_INPUT: Direction
DIRECTION_OUTPUT: Direction
CONSTRUCT_UNSPECIFIED: Construct
CONSTRUCT_TARGET: Construct
CONSTRUCT_RAW: Construct
CONSTRUCT_INSTANCE: Construct
CONSTRUCT_FUNCTION: Construct
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_VERSION_MISMATCH: ErrorCode
ERROR_CODE_BAD_MESSAGE: ErrorCode
ERROR_CODE_PERMISSION: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_UNSUPPORTED: ErrorCode
ERROR_CODE_BUSY: ErrorCode

class Envelope(_message.Message):
    __slots__ = ("seq", "reply_to", "hello", "welcome", "attach", "stats", "stop", "error", "stage_spec", "imu_sample", "frame_meta", "inference_result")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_SPEC_FIELD_NUMBER: _ClassVar[int]
    IMU_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    FRAME_META_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_RESULT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reply_to: int
    hello: Hello
    welcome: Welcome
    attach: Attach
    stats: Stats
    stop: Stop
    error: Error
    stage_spec: StageSpec
    imu_sample: ImuSample
    frame_meta: FrameMeta
    inference_result: InferenceResult
    def __init__(self, seq: _Optional[int] = ..., reply_to: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., attach: _Optional[_Union[Attach, _Mapping]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., stage_spec: _Optional[_Union[StageSpec, _Mapping]] = ..., imu_sample: _Optional[_Union[ImuSample, _Mapping]] = ..., frame_meta: _Optional[_Union[FrameMeta, _Mapping]] = ..., inference_result: _Optional[_Union[InferenceResult, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_major", "protocol_minor", "stage_name", "pid", "role", "subscribe")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    STAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    protocol_minor: int
    stage_name: str
    pid: int
    role: Role
    subscribe: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_major: _Optional[int] = ..., protocol_minor: _Optional[int] = ..., stage_name: _Optional[str] = ..., pid: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., subscribe: _Optional[_Iterable[str]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_major", "protocol_minor", "pid", "session_id")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    protocol_minor: int
    pid: int
    session_id: int
    def __init__(self, protocol_major: _Optional[int] = ..., protocol_minor: _Optional[int] = ..., pid: _Optional[int] = ..., session_id: _Optional[int] = ...) -> None: ...

class RingDescriptor(_message.Message):
    __slots__ = ("name", "capacity", "direction", "record_types", "fd_follows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    RECORD_TYPES_FIELD_NUMBER: _ClassVar[int]
    FD_FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: int
    direction: Direction
    record_types: _containers.RepeatedScalarFieldContainer[int]
    fd_follows: bool
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., record_types: _Optional[_Iterable[int]] = ..., fd_follows: bool = ...) -> None: ...

class Attach(_message.Message):
    __slots__ = ("rings",)
    RINGS_FIELD_NUMBER: _ClassVar[int]
    rings: _containers.RepeatedCompositeFieldContainer[RingDescriptor]
    def __init__(self, rings: _Optional[_Iterable[_Union[RingDescriptor, _Mapping]]] = ...) -> None: ...

class RingCounters(_message.Message):
    __slots__ = ("name", "records_written", "records_read", "bytes_written", "bytes_read", "full_events", "dropped", "used", "capacity", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    FULL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    records_written: int
    records_read: int
    bytes_written: int
    bytes_read: int
    full_events: int
    dropped: int
    used: int
    capacity: int
    mode: str
    def __init__(self, name: _Optional[str] = ..., records_written: _Optional[int] = ..., records_read: _Optional[int] = ..., bytes_written: _Optional[int] = ..., bytes_read: _Optional[int] = ..., full_events: _Optional[int] = ..., dropped: _Optional[int] = ..., used: _Optional[int] = ..., capacity: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class LatencyHistogram(_message.Message):
    __slots__ = ("name", "bounds_ns", "counts", "min_ns", "max_ns", "sum_ns", "budget_violations")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_NS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MIN_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_NS_FIELD_NUMBER: _ClassVar[int]
    SUM_NS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    bounds_ns: _containers.RepeatedScalarFieldContainer[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    min_ns: int
    max_ns: int
    sum_ns: int
    budget_violations: int
    def __init__(self, name: _Optional[str] = ..., bounds_ns: _Optional[_Iterable[int]] = ..., counts: _Optional[_Iterable[int]] = ..., min_ns: _Optional[int] = ..., max_ns: _Optional[int] = ..., sum_ns: _Optional[int] = ..., budget_violations: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("stage_name", "t_ns", "rings", "latencies", "stages", "budgets", "start_ns")
    STAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    T_NS_FIELD_NUMBER: _ClassVar[int]
    RINGS_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    stage_name: str
    t_ns: int
    rings: _containers.RepeatedCompositeFieldContainer[RingCounters]
    latencies: _containers.RepeatedCompositeFieldContainer[LatencyHistogram]
    stages: _containers.RepeatedCompositeFieldContainer[StageState]
    budgets: _containers.RepeatedCompositeFieldContainer[LatencyBudget]
    start_ns: int
    def __init__(self, stage_name: _Optional[str] = ..., t_ns: _Optional[int] = ..., rings: _Optional[_Iterable[_Union[RingCounters, _Mapping]]] = ..., latencies: _Optional[_Iterable[_Union[LatencyHistogram, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[StageState, _Mapping]]] = ..., budgets: _Optional[_Iterable[_Union[LatencyBudget, _Mapping]]] = ..., start_ns: _Optional[int] = ...) -> None: ...

class StageState(_message.Message):
    __slots__ = ("name", "kind", "state", "pid", "restarts", "error", "received", "emitted", "dropped", "counters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    state: str
    pid: int
    restarts: int
    error: str
    received: int
    emitted: int
    dropped: int
    counters: _containers.RepeatedCompositeFieldContainer[Param]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ..., restarts: _Optional[int] = ..., error: _Optional[str] = ..., received: _Optional[int] = ..., emitted: _Optional[int] = ..., dropped: _Optional[int] = ..., counters: _Optional[_Iterable[_Union[Param, _Mapping]]] = ...) -> None: ...

class LatencyBudget(_message.Message):
    __slots__ = ("part", "budget_ns")
    PART_FIELD_NUMBER: _ClassVar[int]
    BUDGET_NS_FIELD_NUMBER: _ClassVar[int]
    part: str
    budget_ns: int
    def __init__(self, part: _Optional[str] = ..., budget_ns: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("int_value", "double_value", "string_value", "bool_value", "list_value", "map_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAP_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    double_value: float
    string_value: str
    bool_value: bool
    list_value: ValueList
    map_value: ValueMap
    def __init__(self, int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: bool = ..., list_value: _Optional[_Union[ValueList, _Mapping]] = ..., map_value: _Optional[_Union[ValueMap, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, items: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class ValueMap(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Param]
    def __init__(self, entries: _Optional[_Iterable[_Union[Param, _Mapping]]] = ...) -> None: ...

class Param(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: Value
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Port(_message.Message):
    __slots__ = ("name", "direction", "link", "link_index", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    LINK_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    direction: Direction
    link: str
    link_index: int
    mode: str
    def __init__(self, name: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., link: _Optional[str] = ..., link_index: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class LinkTopology(_message.Message):
    __slots__ = ("link", "producer", "producer_inputs")
    LINK_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_INPUTS_FIELD_NUMBER: _ClassVar[int]
    link: str
    producer: str
    producer_inputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, link: _Optional[str] = ..., producer: _Optional[str] = ..., producer_inputs: _Optional[_Iterable[str]] = ...) -> None: ...

class StageSpec(_message.Message):
    __slots__ = ("name", "index", "kind", "target", "construct", "args", "params", "function_role", "ports", "stage_names", "link_names", "budgets", "topology", "stats_interval_ns", "main_path", "sys_path", "attempt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONSTRUCT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_ROLE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STAGE_NAMES_FIELD_NUMBER: _ClassVar[int]
    LINK_NAMES_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    STATS_INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    MAIN_PATH_FIELD_NUMBER: _ClassVar[int]
    SYS_PATH_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    kind: str
    target: str
    construct: Construct
    args: _containers.RepeatedCompositeFieldContainer[Value]
    params: _containers.RepeatedCompositeFieldContainer[Param]
    function_role: str
    ports: _containers.RepeatedCompositeFieldContainer[Port]
    stage_names: _containers.RepeatedScalarFieldContainer[str]
    link_names: _containers.RepeatedScalarFieldContainer[str]
    budgets: _containers.RepeatedCompositeFieldContainer[LatencyBudget]
    topology: _containers.RepeatedCompositeFieldContainer[LinkTopology]
    stats_interval_ns: int
    main_path: str
    sys_path: _containers.RepeatedScalarFieldContainer[str]
    attempt: int
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., kind: _Optional[str] = ..., target: _Optional[str] = ..., construct: _Optional[_Union[Construct, str]] = ..., args: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[Param, _Mapping]]] = ..., function_role: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[Port, _Mapping]]] = ..., stage_names: _Optional[_Iterable[str]] = ..., link_names: _Optional[_Iterable[str]] = ..., budgets: _Optional[_Iterable[_Union[LatencyBudget, _Mapping]]] = ..., topology: _Optional[_Iterable[_Union[LinkTopology, _Mapping]]] = ..., stats_interval_ns: _Optional[int] = ..., main_path: _Optional[str] = ..., sys_path: _Optional[_Iterable[str]] = ..., attempt: _Optional[int] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("reason", "grace_ns")
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_NS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    grace_ns: int
    def __init__(self, reason: _Optional[str] = ..., grace_ns: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Stamps(_message.Message):
    __slots__ = ("capture_ns", "publish_ns", "receive_ns", "seq", "source")
    CAPTURE_NS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_NS_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    capture_ns: int
    publish_ns: _containers.RepeatedScalarFieldContainer[int]
    receive_ns: _containers.RepeatedScalarFieldContainer[int]
    seq: int
    source: str
    def __init__(self, capture_ns: _Optional[int] = ..., publish_ns: _Optional[_Iterable[int]] = ..., receive_ns: _Optional[_Iterable[int]] = ..., seq: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class Vec3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Quaternion(_message.Message):
    __slots__ = ("w", "x", "y", "z")
    W_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    w: float
    x: float
    y: float
    z: float
    def __init__(self, w: _Optional[float] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class ImuSample(_message.Message):
    __slots__ = ("stamps", "gyro", "accel", "mag", "orientation", "temperature", "deadline_ns", "device_ns", "late_ns", "raw_gyro", "raw_accel", "raw_mag", "flags")
    STAMPS_FIELD_NUMBER: _ClassVar[int]
    GYRO_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    MAG_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NS_FIELD_NUMBER: _ClassVar[int]
    LATE_NS_FIELD_NUMBER: _ClassVar[int]
    RAW_GYRO_FIELD_NUMBER: _ClassVar[int]
    RAW_ACCEL_FIELD_NUMBER: _ClassVar[int]
    RAW_MAG_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    stamps: Stamps
    gyro: Vec3
    accel: Vec3
    mag: Vec3
    orientation: Quaternion
    temperature: Celsius
    deadline_ns: int
    device_ns: int
    late_ns: int
    raw_gyro: _containers.RepeatedScalarFieldContainer[int]
    raw_accel: _containers.RepeatedScalarFieldContainer[int]
    raw_mag: _containers.RepeatedScalarFieldContainer[int]
    flags: int
    def __init__(self, stamps: _Optional[_Union[Stamps, _Mapping]] = ..., gyro: _Optional[_Union[Vec3, _Mapping]] = ..., accel: _Optional[_Union[Vec3, _Mapping]] = ..., mag: _Optional[_Union[Vec3, _Mapping]] = ..., orientation: _Optional[_Union[Quaternion, _Mapping]] = ..., temperature: _Optional[_Union[Celsius, _Mapping]] = ..., deadline_ns: _Optional[int] = ..., device_ns: _Optional[int] = ..., late_ns: _Optional[int] = ..., raw_gyro: _Optional[_Iterable[int]] = ..., raw_accel: _Optional[_Iterable[int]] = ..., raw_mag: _Optional[_Iterable[int]] = ..., flags: _Optional[int] = ...) -> None: ...

class Celsius(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: float
    def __init__(self, value: _Optional[float] = ...) -> None: ...

class FrameMeta(_message.Message):
    __slots__ = ("stamps", "frame_seq", "width", "height", "channels", "dtype", "pixel_format", "ring", "ring_offset", "attitude")
    STAMPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_SEQ_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    RING_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ATTITUDE_FIELD_NUMBER: _ClassVar[int]
    stamps: Stamps
    frame_seq: int
    width: int
    height: int
    channels: int
    dtype: str
    pixel_format: str
    ring: str
    ring_offset: int
    attitude: AlignedAttitude
    def __init__(self, stamps: _Optional[_Union[Stamps, _Mapping]] = ..., frame_seq: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., dtype: _Optional[str] = ..., pixel_format: _Optional[str] = ..., ring: _Optional[str] = ..., ring_offset: _Optional[int] = ..., attitude: _Optional[_Union[AlignedAttitude, _Mapping]] = ...) -> None: ...

class AlignedAttitude(_message.Message):
    __slots__ = ("orientation", "gyro", "gap_ns", "extrapolated", "before_ns", "after_ns")
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    GYRO_FIELD_NUMBER: _ClassVar[int]
    GAP_NS_FIELD_NUMBER: _ClassVar[int]
    EXTRAPOLATED_FIELD_NUMBER: _ClassVar[int]
    BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    AFTER_NS_FIELD_NUMBER: _ClassVar[int]
    orientation: Quaternion
    gyro: Vec3
    gap_ns: int
    extrapolated: bool
    before_ns: int
    after_ns: int
    def __init__(self, orientation: _Optional[_Union[Quaternion, _Mapping]] = ..., gyro: _Optional[_Union[Vec3, _Mapping]] = ..., gap_ns: _Optional[int] = ..., extrapolated: bool = ..., before_ns: _Optional[int] = ..., after_ns: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max", "score", "class_id", "label")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float
    class_id: int
    label: str
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class TensorSummary(_message.Message):
    __slots__ = ("name", "shape", "dtype", "min", "max", "mean", "top_indices", "top_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    TOP_INDICES_FIELD_NUMBER: _ClassVar[int]
    TOP_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    min: float
    max: float
    mean: float
    top_indices: _containers.RepeatedScalarFieldContainer[int]
    top_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ..., top_indices: _Optional[_Iterable[int]] = ..., top_values: _Optional[_Iterable[float]] = ...) -> None: ...

class InferenceResult(_message.Message):
    __slots__ = ("stamps", "model_id", "frame_seq", "inference_start_ns", "inference_end_ns", "detections", "tensor", "attitude", "offload")
    STAMPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_SEQ_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_START_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_END_NS_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ATTITUDE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    stamps: Stamps
    model_id: str
    frame_seq: int
    inference_start_ns: int
    inference_end_ns: int
    detections: Detections
    tensor: TensorSummary
    attitude: AlignedAttitude
    offload: OffloadInfo
    def __init__(self, stamps: _Optional[_Union[Stamps, _Mapping]] = ..., model_id: _Optional[str] = ..., frame_seq: _Optional[int] = ..., inference_start_ns: _Optional[int] = ..., inference_end_ns: _Optional[int] = ..., detections: _Optional[_Union[Detections, _Mapping]] = ..., tensor: _Optional[_Union[TensorSummary, _Mapping]] = ..., attitude: _Optional[_Union[AlignedAttitude, _Mapping]] = ..., offload: _Optional[_Union[OffloadInfo, _Mapping]] = ...) -> None: ...

class OffloadInfo(_message.Message):
    __slots__ = ("unsure", "answered_by", "timed_out", "round_trip_ns", "server_inference_ns", "edge_model_id", "edge_boxes", "edge_mean_score", "not_forwarded")
    UNSURE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_INFERENCE_NS_FIELD_NUMBER: _ClassVar[int]
    EDGE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_BOXES_FIELD_NUMBER: _ClassVar[int]
    EDGE_MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    NOT_FORWARDED_FIELD_NUMBER: _ClassVar[int]
    unsure: str
    answered_by: str
    timed_out: bool
    round_trip_ns: int
    server_inference_ns: int
    edge_model_id: str
    edge_boxes: int
    edge_mean_score: float
    not_forwarded: str
    def __init__(self, unsure: _Optional[str] = ..., answered_by: _Optional[str] = ..., timed_out: bool = ..., round_trip_ns: _Optional[int] = ..., server_inference_ns: _Optional[int] = ..., edge_model_id: _Optional[str] = ..., edge_boxes: _Optional[int] = ..., edge_mean_score: _Optional[float] = ..., not_forwarded: _Optional[str] = ...) -> None: ...

class Detections(_message.Message):
    __slots__ = ("boxes",)
    BOXES_FIELD_NUMBER: _ClassVar[int]
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    def __init__(self, boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ...) -> None: ...
