// Words of the dock screen, Chinese (default) and English. Codes come from the station's status API
// (bay states, error classes, LED states); words live here, never in the API.

export const LANGUAGES = ["zh", "en"];

const zh = {
  lang: "zh-CN",
  switchTo: "English",
  title: "执法记录仪采集站",
  bay: (n) => (String(n).startsWith("device:") ? "位置未知" : `${n} 号位`),
  central: "中心",
  centralReachable: "已连接",
  centralUnreachable: "无法连接",
  centralNotConfigured: "未配置",
  breakerOpen: "暂停上传",
  backlog: "待上传",
  backlogNone: "无",
  backlogItems: (n, size) => `${n} 项 · ${size}`,
  disk: "存储",
  diskFree: (free, pct) => `可用 ${free} (${pct}%)`,
  clock: "时钟",
  clockTrusted: "已同步",
  clockUntrusted: "未同步",
  officer: "警员",
  badge: "警号",
  device: "设备",
  battery: "电量",
  files: "文件",
  speed: "速度",
  eta: "剩余",
  legend: "指示灯说明",
  // The bay board reports this bay's presence changing too often to act on (a worn switch, a faulty board).
  bouncing: "本托架插拔信号异常，请通知管理员检查",
  // The USB serial the recorder in this bay claims: shared with the recorder in another bay, or none.
  usbSerial: {
    shared: (bays) => `USB序列号与${bays.length ? `${bays.join("、")}号托架` : "另一设备"}相同，已按托架分别采集；请通知管理员`,
    missing: "记录仪无可用USB序列号，无法登记绑定；请通知管理员",
  },
  disconnected: "与采集站的连接已中断，正在重新连接…",
  duration: (s) => (s >= 3600 ? `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分`
    : s >= 60 ? `${Math.floor(s / 60)} 分 ${s % 60} 秒` : `${s} 秒`),
  states: {
    empty: ["空闲", "请插入执法记录仪"],
    authenticating: ["正在识别", "请勿拔出"],
    copying: ["正在采集", "请勿拔出"],
    verifying: ["正在校验", "请勿拔出"],
    awaiting_receipt: ["已保存，待回执", "文件已安全保存，可以取走；下次插入时清除"],
    done: ["采集完成", "可以取走执法记录仪"],
    error: ["采集失败", "请将执法记录仪交给管理员"],
  },
  errors: {
    not_allowed: ["未登记的记录仪", "本站不认识此执法记录仪。请将执法记录仪交给管理员"],
    wrong_password: ["密码错误", "记录仪拒绝了本站密码，未读取任何文件。请将执法记录仪交给管理员"],
    no_password: ["本站未配置密码", "请将执法记录仪交给管理员"],
    no_identity: ["无法识别记录仪", "请将执法记录仪交给管理员"],
    disk_full: ["采集站存储已满", "记录仪未被改动。请取回执法记录仪并通知管理员"],
    rooms_recording: ["存储空间留给正在录制的讯问室", "记录仪未被改动。录制结束后请重新插入"],
    pulled_early: ["拔出过早", "采集未完成。请将执法记录仪放回原位"],
    files_failed: ["部分文件失败", "其余文件已安全保存。请将执法记录仪交给管理员"],
    no_volume: ["记录仪存储未出现", "请重新插入；如仍失败，请交给管理员"],
    device_error: ["记录仪应答异常", "请将执法记录仪交给管理员"],
    failed: ["采集出错", "请将执法记录仪交给管理员"],
  },
  leds: {
    OFF: "熄灭",
    IDLE: "空闲，可插入",
    COPYING: "正在采集，请勿拔出",
    DONE: "完成，可以取走",
    RECEIPT: "已保存，可以取走，待中心回执",
    ATTENTION: "需要人员处理",
    FULL: "存储已满，通知管理员",
    PARTIAL: "部分文件失败，交给管理员",
    ERROR: "失败，见屏幕",
    DENIED: "未登记，交给管理员",
    PASSWORD: "密码错误，交给管理员",
    PULLED: "拔出过早，请放回",
    BOUNCING: "托架插拔信号异常，通知管理员",
  },
  rhythms: {
    steady: "常亮",
    slow: "慢闪",
    fast: "快闪",
    double: "双闪",
    heartbeat: "间隔短闪",
    triple: "三闪",
  },
  // The GB/T 28181 devices panel (shown only when the station runs the platform).
  gb: {
    title: "国标设备 (GB/T 28181)",
    summary: (n, online) => `${n} 台 · ${online} 台在线`,
    none: "尚无设备注册",
    more: (n) => `另有 ${n} 台未显示`,
    online: "在线",
    offline: "离线",
    keepalive: (age) => `心跳 ${age}前`,
    noKeepalive: "无心跳",
    clockOffset: (s) => `时钟偏差 ${s} 秒`,
    channels: (n) => `${n} 个通道`,
    downloads: "下载",
    downloadStates: { idle: "空闲", listing: "查询录像", downloading: "正在下载", waiting: "等待" },
    done: (n) => `完成 ${n}`,
    skipped: (n) => `已有 ${n}`,
    failed: (n) => `失败 ${n}`,
    incomplete: (n) => `不完整 ${n}`,
    lastPass: (time) => `上次 ${time}`,
  },
  fleet: {
    title: "执法记录仪",
    counts: {
      overdue: (n) => `${n} 台逾期未还`,
      faulty: (n) => `${n} 台故障`,
      out: (n) => `${n} 台已领用`,
      docked: (n) => `${n} 台在位`,
      away: (n) => `${n} 台不在位`,
      never_docked: (n) => `${n} 台未插入过`,
    },
    total: (n) => `共 ${n} 台`,
    more: (n) => `另有 ${n} 台未显示`,
    states: {
      overdue: "逾期未还",
      faulty: "故障",
      out: "已领用",
      docked: "在位",
      away: "不在位（未办领用）",
      never_docked: "从未插入本站",
    },
    bayStates: { offloading: "正在采集", charging: "充电中", ready: "可领用", faulty: "故障" },
    bay: (n) => (n == null ? "托架" : `${n} 号位`),
    since: (time) => `领用于 ${time}`,
    due: (time) => `应于 ${time} 归还`,
    lastHolder: (who, time) => `${who} 于 ${time} 归还`,
    battery: (pct) => `电量 ${pct}%`,
    storage: (free, total) => `存储 可用 ${free} / ${total}`,
    firmware: (version) => `固件 ${version}`,
    lastDocking: (time) => `上次插入 ${time}`,
    problems: {
      last_docking_failed: "上次采集失败",
      battery_out_of_bounds: "电量读数异常",
      storage_out_of_bounds: "存储读数异常",
    },
  },
  colours: { white: "白", blue: "蓝", green: "绿", amber: "黄", red: "红", off: "灭" },
};

const en = {
  lang: "en",
  switchTo: "中文",
  title: "Docking station",
  bay: (n) => (String(n).startsWith("device:") ? "Bay unknown" : `Bay ${n}`),
  central: "Central",
  centralReachable: "connected",
  centralUnreachable: "unreachable",
  centralNotConfigured: "not configured",
  breakerOpen: "uploads paused",
  backlog: "To upload",
  backlogNone: "none",
  backlogItems: (n, size) => `${n} items · ${size}`,
  disk: "Storage",
  diskFree: (free, pct) => `${free} free (${pct}%)`,
  clock: "Clock",
  clockTrusted: "synchronised",
  clockUntrusted: "not synchronised",
  officer: "Officer",
  badge: "Badge",
  device: "Device",
  battery: "Battery",
  files: "Files",
  speed: "Speed",
  eta: "Left",
  legend: "What the bay lights mean",
  bouncing: "This bay's sensor keeps flickering: tell the administrator",
  usbSerial: {
    shared: (bays) => `Same USB serial as ${bays.length ? `bay ${bays.join(", ")}` : "another device"}: each copied from its own bay. Tell the administrator`,
    missing: "No usable USB serial, it cannot be registered: tell the administrator",
  },
  disconnected: "Lost the connection to the station, reconnecting…",
  duration: (s) => (s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
    : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`),
  states: {
    empty: ["Empty", "Dock a recorder"],
    authenticating: ["Identifying", "Do not remove"],
    copying: ["Copying", "Do not remove"],
    verifying: ["Verifying", "Do not remove"],
    awaiting_receipt: ["Saved, awaiting receipt", "Files are safe here. Take it; erased at the next docking"],
    done: ["Done", "Take your recorder"],
    error: ["Failed", "Hand the recorder to the administrator"],
  },
  errors: {
    not_allowed: ["Recorder not registered", "Hand the recorder to the administrator"],
    wrong_password: ["Wrong password", "Nothing was read. Hand the recorder to the administrator"],
    no_password: ["No password configured", "Hand the recorder to the administrator"],
    no_identity: ["Unknown recorder", "Hand the recorder to the administrator"],
    disk_full: ["Station storage full", "The recorder was not touched. Take it back and tell the administrator"],
    rooms_recording: ["Space kept for the rooms recording", "The recorder was not touched. Dock it again once they stop"],
    pulled_early: ["Removed too early", "Not finished. Put the recorder back in its bay"],
    files_failed: ["Some files failed", "The rest are safe. Hand the recorder to the administrator"],
    no_volume: ["Recorder storage missing", "Dock it again; if it fails again, hand it to the administrator"],
    device_error: ["Recorder answered wrongly", "Hand the recorder to the administrator"],
    failed: ["Copy failed", "Hand the recorder to the administrator"],
  },
  leds: {
    OFF: "Off",
    IDLE: "Ready",
    COPYING: "Copying, do not remove",
    DONE: "Done, take it",
    RECEIPT: "Saved, take it; awaiting receipt",
    ATTENTION: "Needs a person",
    FULL: "Storage full, tell the administrator",
    PARTIAL: "Some files failed, to the administrator",
    ERROR: "Failed, see the screen",
    DENIED: "Not registered, to the administrator",
    PASSWORD: "Wrong password, to the administrator",
    PULLED: "Removed too early, put it back",
    BOUNCING: "Bay sensor faulty, tell the administrator",
  },
  rhythms: {
    steady: "steady",
    slow: "slow blink",
    fast: "fast blink",
    double: "double flash",
    heartbeat: "short flash",
    triple: "triple flash",
  },
  gb: {
    title: "GB/T 28181 devices",
    summary: (n, online) => `${n === 1 ? "1 device" : `${n} devices`} · ${online} online`,
    none: "No device has registered yet",
    more: (n) => `${n} more not shown`,
    online: "online",
    offline: "offline",
    keepalive: (age) => `keepalive ${age} ago`,
    noKeepalive: "no keepalive",
    clockOffset: (s) => `clock ${s} s`,
    channels: (n) => (n === 1 ? "1 channel" : `${n} channels`),
    downloads: "Downloads",
    downloadStates: { idle: "idle", listing: "listing", downloading: "downloading", waiting: "waiting" },
    done: (n) => `${n} done`,
    skipped: (n) => `${n} already sealed`,
    failed: (n) => `${n} failed`,
    incomplete: (n) => `${n} incomplete`,
    lastPass: (time) => `last pass ${time}`,
  },
  fleet: {
    title: "Recorders",
    counts: {
      overdue: (n) => `${n} OVERDUE`,
      faulty: (n) => `${n} faulty`,
      out: (n) => `${n} out`,
      docked: (n) => `${n} docked`,
      away: (n) => `${n} away`,
      never_docked: (n) => `${n} never docked`,
    },
    total: (n) => (n === 1 ? "1 recorder" : `${n} recorders`),
    more: (n) => `${n} more not shown`,
    states: {
      overdue: "overdue",
      faulty: "faulty",
      out: "out",
      docked: "docked",
      away: "away (taken without a check-out)",
      never_docked: "never docked here",
    },
    bayStates: { offloading: "offloading", charging: "charging", ready: "ready to issue", faulty: "faulty" },
    bay: (n) => (n == null ? "a bay" : `bay ${n}`),
    since: (time) => `out since ${time}`,
    due: (time) => `due back ${time}`,
    lastHolder: (who, time) => `returned by ${who} ${time}`,
    battery: (pct) => `battery ${pct}%`,
    storage: (free, total) => `storage ${free} free of ${total}`,
    firmware: (version) => `firmware ${version}`,
    lastDocking: (time) => `last docked ${time}`,
    problems: {
      last_docking_failed: "last offload failed",
      battery_out_of_bounds: "battery reading out of bounds",
      storage_out_of_bounds: "storage reading out of bounds",
    },
  },
  colours: { white: "white", blue: "blue", green: "green", amber: "amber", red: "red", off: "off" },
};

const WORDS = { zh, en };
const STORAGE_KEY = "edge.dock.language";

export function savedLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return LANGUAGES.includes(saved) ? saved : "zh";
  } catch {
    return "zh"; // storage disabled in a locked-down kiosk profile: Chinese, as by default
  }
}

export function saveLanguage(language) {
  try {
    localStorage.setItem(STORAGE_KEY, language);
  } catch {
    // nothing to do: the switch still works until the page reloads
  }
}

export function words(language) {
  return WORDS[language] ?? zh;
}

/** The heading and instruction of a bay: for an error, its class's; otherwise its state's. */
export function stateWords(t, bay) {
  if (bay.state === "error") {
    return t.errors[bay.error_class] ?? t.states.error;
  }
  return t.states[bay.state] ?? [String(bay.state), ""];
}
