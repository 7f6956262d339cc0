// Chinese by default, English on request; the choice is kept in localStorage.
const TEXT = {
  zh: {
    "nav.fleet": "装备", "fleet.title": "全局执法记录仪", "fleet.state": "状态",
    "fleet.holder": "领用人（警号 姓名）", "fleet.since": "领用时间", "fleet.due": "应还时间",
    "fleet.overdue_by": "逾期", "fleet.battery": "电量", "fleet.storage": "存储（剩余/总计）",
    "fleet.firmware": "固件版本", "fleet.last_docking": "最近入位", "fleet.empty": "没有可查看的记录仪。",
    "fleet.two_stations": "同时出现在两个采集站", "fleet.other_stations": "个您无权查看的采集站", "fleet.summary": "记录仪 {n} 台，逾期未还 {overdue} 台",
    "state.overdue": "逾期未还", "state.out": "已领用", "state.docked": "在位", "state.faulty": "故障",
    "state.away": "离位未领用", "state.in": "已归还", "unit.hours": "小时", "unit.minutes": "分钟",
    "outcome.under_way": "进行中",
    "title": "执法记录审查台", "nav.search": "检索", "nav.log": "访问日志", "signout": "退出",
    "lang.other": "English",
    "signin.title": "登录", "signin.name": "账号", "signin.password": "密码",
    "signin.totp": "动态口令（如已启用）", "signin.submit": "登录", "signin.cert": "使用审查员证书登录",
    "search.title": "检索执法记录", "search.submit": "检索", "search.empty": "没有可查看的记录。",
    "any": "不限", "yes": "是", "no": "否", "more": "更多",
    "field.case": "案件编号", "field.officer": "警号", "field.device": "记录仪编号", "field.station": "采集站",
    "field.unit": "单位代码", "field.from": "起", "field.to": "止", "field.important": "重要",
    "field.acquired": "采集时间", "field.flags": "标记", "field.item": "记录", "field.time": "时间",
    "field.event": "事件", "field.where": "地点", "field.who": "人员", "field.detail": "详情",
    "field.source": "来源", "field.changes": "变更", "field.reader": "审查员", "field.action": "操作",
    "field.query": "条件", "field.bytes": "字节", "field.remote": "来源地址", "field.sha256": "SHA-256",
    "field.size": "大小（字节）", "field.accepted": "中心接收时间", "field.officer_name": "姓名",
    "field.location": "采集地点", "field.collector": "采集人", "field.subject": "证明对象",
    "field.category": "类别", "field.retention": "保存期限", "field.recorded": "录制开始（设备时间）",
    "field.original": "原始文件名",
    "flag.important": "重要", "flag.sensitive": "敏感",
    "item.title": "执法记录", "item.nomedia": "此类文件不在页面中播放。",
    "receipt.title": "回执核验", "receipt.ok": "已核验：签名与包含证明均有效", "receipt.failed": "核验失败",
    "check.signature": "树头签名", "check.leaf": "叶子与记录一致", "check.inclusion_proof": "包含证明",
    "check.tree_head_in_log": "树头在日志中", "check.witnessed_head": "见证的台账头",
    "sensitive.title": "敏感标记", "sensitive.none": "未标记为敏感。", "sensitive.marked": "敏感：仅以下审查员可查看",
    "sensitive.readers": "可查看的审查员（空格分隔）", "sensitive.reason": "理由",
    "sensitive.mark": "标记为敏感", "sensitive.unmark": "取消敏感标记",
    "timeline.title": "监管链时间线", "history.title": "元数据变更",
    "log.title": "访问日志", "log.submit": "筛选",
    "event.acquired": "采集", "event.verified": "校验", "event.sealed": "封存", "event.queued": "排队上传",
    "event.uploaded": "已上传", "event.receipt": "回执", "event.wiped": "已从记录仪删除",
    "event.accepted": "中心接收", "event.tagged": "补录信息", "event.purged": "本地副本清除",
    "event.error": "错误", "event.wipe_deferred": "暂缓删除", "event.requeued": "重新上传",
    "event.sensitive_marked": "标记为敏感", "event.sensitive_unmarked": "取消敏感标记", "event.read": "查阅",
    "role.reader": "审查员", "role.supervisor": "督察",
    "error.unauthenticated": "账号、密码或动态口令有误，或账号已停用、因多次失败暂时锁定。",
    "error.rate_limited": "登录尝试过多，请稍后再试。", "error.forbidden": "无权执行此操作。",
    "error.not_found": "没有这条记录，或您无权查看。", "error.other": "出错了：",
  },
  en: {
    "nav.fleet": "Fleet", "fleet.title": "The agency's recorders", "fleet.state": "State",
    "fleet.holder": "Holder (officer no. name)", "fleet.since": "Out since", "fleet.due": "Due back",
    "fleet.overdue_by": "Overdue by", "fleet.battery": "Battery", "fleet.storage": "Storage (free/total)",
    "fleet.firmware": "Firmware", "fleet.last_docking": "Last docking", "fleet.empty": "No recorders you may see.",
    "fleet.two_stations": "at two stations", "fleet.other_stations": "station(s) outside your scope", "fleet.summary": "{n} recorder(s), {overdue} overdue",
    "state.overdue": "OVERDUE", "state.out": "out", "state.docked": "in a bay", "state.faulty": "faulty",
    "state.away": "away (not checked out)", "state.in": "returned", "unit.hours": "h", "unit.minutes": "min",
    "outcome.under_way": "under way",
    "title": "Evidence review console", "nav.search": "Search", "nav.log": "Access log", "signout": "Sign out",
    "lang.other": "中文",
    "signin.title": "Sign in", "signin.name": "Account", "signin.password": "Password",
    "signin.totp": "One-time code (if enrolled)", "signin.submit": "Sign in",
    "signin.cert": "Sign in with a reader certificate",
    "search.title": "Search recordings", "search.submit": "Search", "search.empty": "No recordings you may see.",
    "any": "Any", "yes": "Yes", "no": "No", "more": "More",
    "field.case": "Case number", "field.officer": "Officer no.", "field.device": "Device", "field.station": "Station",
    "field.unit": "Unit code", "field.from": "From", "field.to": "To", "field.important": "Important",
    "field.acquired": "Acquired", "field.flags": "Flags", "field.item": "Item", "field.time": "Time",
    "field.event": "Event", "field.where": "Where", "field.who": "Who", "field.detail": "Detail",
    "field.source": "Source", "field.changes": "Changes", "field.reader": "Reader", "field.action": "Action",
    "field.query": "Query", "field.bytes": "Bytes", "field.remote": "Address", "field.sha256": "SHA-256",
    "field.size": "Size (bytes)", "field.accepted": "Accepted by the central", "field.officer_name": "Name",
    "field.location": "Location", "field.collector": "Collector", "field.subject": "Subject",
    "field.category": "Category", "field.retention": "Retention", "field.recorded": "Recorded (device time)",
    "field.original": "Original name",
    "flag.important": "important", "flag.sensitive": "sensitive",
    "item.title": "Recording", "item.nomedia": "This kind of file is not played in the page.",
    "receipt.title": "Receipt check", "receipt.ok": "Verified: signature and inclusion proof hold",
    "receipt.failed": "Verification FAILED",
    "check.signature": "Tree head signature", "check.leaf": "Leaf matches the item",
    "check.inclusion_proof": "Inclusion proof", "check.tree_head_in_log": "Tree head in the log",
    "check.witnessed_head": "Witnessed ledger head",
    "sensitive.title": "Sensitive", "sensitive.none": "Not marked sensitive.",
    "sensitive.marked": "Sensitive: only these readers may see it",
    "sensitive.readers": "Readers who may see it (space-separated)", "sensitive.reason": "Reason",
    "sensitive.mark": "Mark sensitive", "sensitive.unmark": "Unmark",
    "timeline.title": "Custody timeline", "history.title": "Metadata changes",
    "log.title": "Access log", "log.submit": "Filter",
    "event.acquired": "Acquired", "event.verified": "Verified", "event.sealed": "Sealed", "event.queued": "Queued",
    "event.uploaded": "Uploaded", "event.receipt": "Receipt", "event.wiped": "Wiped from recorder",
    "event.accepted": "Accepted by the central", "event.tagged": "Tagged", "event.purged": "Local copy purged",
    "event.error": "Error", "event.wipe_deferred": "Wipe deferred", "event.requeued": "Requeued",
    "event.sensitive_marked": "Marked sensitive", "event.sensitive_unmarked": "Unmarked", "event.read": "Read",
    "role.reader": "reader", "role.supervisor": "supervisor",
    "error.unauthenticated": "The account, password or code is wrong, or the account is disabled or locked after repeated failures.",
    "error.rate_limited": "Too many sign-in attempts; try again later.", "error.forbidden": "Not allowed.",
    "error.not_found": "No such recording, or you may not see it.", "error.other": "Something went wrong: ",
  },
};

let lang = localStorage.getItem("edge-console-lang") === "en" ? "en" : "zh";

export function t(key) {
  return TEXT[lang][key] ?? TEXT.zh[key] ?? key;
}

export function has(key) {
  return key in TEXT[lang];
}

export function currentLang() {
  return lang;
}

export function toggleLang() {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("edge-console-lang", lang);
  applyI18n(document);
}

export function applyI18n(root) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const node of root.querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n);
  }
  const switcher = document.getElementById("lang");
  if (switcher) switcher.textContent = t("lang.other");
}
