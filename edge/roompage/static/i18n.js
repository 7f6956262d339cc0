// Words of the room page, Chinese (default) and English. States come from the station's room status
// (GET /api/v1/rooms); words live here. A refusal's reason is the station's own text, shown as it is.

export const LANGUAGES = ["zh", "en"];

const zh = {
  lang: "zh-CN",
  switchTo: "English",
  title: "询问室录制",
  recording: "录制中",
  idle: "未录制",
  attention: "录制中 · 有中断",
  elapsed: (text) => `已用时 ${text}`,
  caseNumber: "案件编号",
  subject: "证明对象",
  collector: "采集人",
  persons: "在场人员",
  started: "开始时间",
  startedBy: (time, by) => `${time}（${by}）`,
  collectorWithNo: (name, no) => (no ? `${name}（${no}）` : name),
  person: (name, role) => `${name}（${role}）`,
  source: "画面/声音源",
  state: "状态",
  sealed: "已封存片段",
  latency: "最近封存用时",
  seconds: (s) => `${s} 秒`,
  sourceRecording: "录制中",
  sourceStarting: "正在启动",
  sourceGap: (since, reason) => `中断 自 ${since}：${reason}`,
  sourceGapAttempts: (n) => `（已重试 ${n} 次）`,
  failed: (n) => `，${n} 段未能封存`,
  startTitle: "开始录制",
  fCase: "案件编号",
  fSubject: "证明对象",
  fCollector: "采集人",
  fCollectorNo: "采集人警号",
  fPersons: "在场人员",
  fPersonsHint: "每行一人：姓名:身份，例如 李四:被询问人",
  start: "开始录制",
  note: "打点说明",
  mark: "打点",
  stop: "停止录制",
  confirmTitle: "确认停止录制？",
  confirmText: (room, caseNumber) => `将停止${room}的录制（案件编号 ${caseNumber}），并封存全部录像。`,
  cancel: "继续录制",
  confirmStop: "确认停止",
  marked: (time, note, by) => `${time} 打点：${note}（${by}）`,
  refused: (reason) => `操作被拒绝：${reason}`,
  notAllowed: (reason) => `本页无权访问录制服务：${reason}`,
  personsBad: (line) => `在场人员格式不对（应为 姓名:身份）：${line}`,
  missing: (label) => `请填写${label}`,
  disconnected: "与录制服务的连接已中断，正在重新连接…",
  spaceLow: (m) => `存储空间不足：约 ${m} 分钟后将无法继续封存录像，请通知管理员`,
  spaceCritical: (m) => `存储空间即将用尽（约 ${m} 分钟）：请立即通知管理员`,
  spaceUnknownMinutes: "—",
  spaceUnknown: (error) => `无法读取存储空间（${error}）：剩余空间未知，请立即通知管理员`,
  spaceReserve: (names) => `存储空间已到保留下限，以下信号源已停止录制（已录内容均已封存）：${names}。请立即通知管理员释放空间`,
  noRooms: "本机未配置询问室",
  panelConnected: "按钮面板：已连接",
  panelAway: "按钮面板：未连接",
  lamp: { OFF: "指示灯：熄灭", STEADY: "指示灯：常亮", BLINK: "指示灯：闪烁", REFUSE: "指示灯：拒绝提示" },
  climate: (t, h) => `温度 ${t}℃ 湿度 ${h}%RH`,
  ptz: (preset) => `云台：预置位 ${preset}`,
  ptzError: (error) => `云台故障：${error}`,
  duration: (s) => {
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    return `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
  },
};

const en = {
  lang: "en",
  switchTo: "中文",
  title: "Room recording",
  recording: "Recording",
  idle: "Not recording",
  attention: "Recording · interrupted",
  elapsed: (text) => `Elapsed ${text}`,
  caseNumber: "Case number",
  subject: "Subject",
  collector: "Collector",
  persons: "Persons present",
  started: "Started",
  startedBy: (time, by) => `${time} (${by})`,
  collectorWithNo: (name, no) => (no ? `${name} (${no})` : name),
  person: (name, role) => `${name} (${role})`,
  source: "Source",
  state: "State",
  sealed: "Segments sealed",
  latency: "Last seal took",
  seconds: (s) => `${s} s`,
  sourceRecording: "Recording",
  sourceStarting: "Starting",
  sourceGap: (since, reason) => `GAP since ${since}: ${reason}`,
  sourceGapAttempts: (n) => ` (${n} restarts so far)`,
  failed: (n) => `, ${n} not sealed`,
  startTitle: "Start a recording",
  fCase: "Case number",
  fSubject: "Subject",
  fCollector: "Collector",
  fCollectorNo: "Collector's badge no.",
  fPersons: "Persons present",
  fPersonsHint: "One per line, name:role, e.g. Li Si:interviewee",
  start: "Start recording",
  note: "Mark note",
  mark: "Mark",
  stop: "Stop recording",
  confirmTitle: "Stop the recording?",
  confirmText: (room, caseNumber) => `This stops the recording of ${room} (case ${caseNumber}) and seals it.`,
  cancel: "Keep recording",
  confirmStop: "Stop",
  marked: (time, note, by) => `${time} mark: ${note} (${by})`,
  refused: (reason) => `Refused: ${reason}`,
  notAllowed: (reason) => `This page may not use the recording service: ${reason}`,
  personsBad: (line) => `A person must be written name:role: ${line}`,
  missing: (label) => `Please fill in: ${label}`,
  disconnected: "The connection to the recording service is lost, reconnecting…",
  spaceLow: (m) => `Disk space is low: about ${m} minutes before nothing more can be sealed. Tell the administrator`,
  spaceCritical: (m) => `Disk space nearly gone (about ${m} minutes): tell the administrator now`,
  spaceUnknownMinutes: "–",
  spaceUnknown: (error) => `The free disk space cannot be read (${error}): how much is left is unknown. Tell the administrator now`,
  spaceReserve: (names) => `The disk is at its reserve: recording stopped for ${names} (what they recorded is sealed). Tell the administrator to free space now`,
  noRooms: "No rooms are configured on this PC",
  panelConnected: "Button panel: connected",
  panelAway: "Button panel: not connected",
  lamp: { OFF: "Lamp: off", STEADY: "Lamp: steady", BLINK: "Lamp: blinking", REFUSE: "Lamp: refusal" },
  climate: (t, h) => `${t} °C, ${h} %RH`,
  ptz: (preset) => `PTZ: preset ${preset}`,
  ptzError: (error) => `PTZ fault: ${error}`,
  duration: zh.duration,
};

const WORDS = { zh, en };
const STORAGE_KEY = "edge.rooms.language";

export function savedLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return LANGUAGES.includes(saved) ? saved : "zh";
  } catch {
    return "zh";
  }
}

export function saveLanguage(language) {
  try {
    localStorage.setItem(STORAGE_KEY, language);
  } catch {
    // storage disabled: the switch still works until the page reloads
  }
}

export function words(language) {
  return WORDS[language] ?? zh;
}
